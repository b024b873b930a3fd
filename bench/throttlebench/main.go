// Command throttlebench checks that a throttle node holds its configured
// rate: it exports a null-co node behind a throttle group from blockd and
// from qemu-storage-daemon, drives each with fio's nbd engine for a while
// and prints the rate reached against the limit, for both daemons.
//
//	go run ./bench/throttlebench [-seconds 10] [-blockd bin/blockd]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/blockd/blockd/bench/internal/benchutil"
)

var (
	seconds   = flag.Int("seconds", 10, "seconds per measurement")
	blockdBin = flag.String("blockd", "bin/blockd", "blockd binary")
)

type limit struct {
	name   string
	limits string // --object limits
	rw, bs string // fio workload
	want   float64
	unit   string
}

func main() {
	flag.Parse()
	dir, err := os.MkdirTemp("", "throttlebench")
	benchutil.Check(err)
	defer os.RemoveAll(dir)
	cases := []limit{
		{"iops-total=2000, 4k randread", "limits.iops-total=2000", "randread", "4k", 2000, "IOPS"},
		{"iops-write=500, 4k randwrite", "limits.iops-write=500", "randwrite", "4k", 500, "IOPS"},
		{"bps-total=20 MiB/s, 64k read", "limits.bps-total=20971520", "read", "64k", 20, "MiB/s"},
	}
	fmt.Printf("%-32s %10s %12s %8s %12s %8s\n", "limit", "configured", "blockd", "error", "qsd", "error")
	for _, c := range cases {
		var got [2]float64
		for i, name := range []string{"blockd", "qsd"} {
			got[i] = measure(name, dir, c)
		}
		fmt.Printf("%-32s %10.0f %12.1f %7.1f%% %12.1f %7.1f%%\n", c.name, c.want, got[0], 100*(got[0]-c.want)/c.want, got[1], 100*(got[1]-c.want)/c.want)
	}
}

func measure(daemon, dir string, c limit) float64 {
	sock := filepath.Join(dir, daemon+".sock")
	os.Remove(sock)
	bin := *blockdBin
	if daemon == "qsd" {
		bin = "qemu-storage-daemon"
	}
	var args []string
	if daemon == "blockd" {
		args = append(args, "--log-level", "warn")
	}
	cmd := exec.Command(bin, append(args,
		"--object", "throttle-group,id=tg0,"+c.limits,
		"--blockdev", "driver=null-co,node-name=n,size=1073741824",
		"--blockdev", "driver=throttle,node-name=t,throttle-group=tg0,file=n",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "type=nbd,id=e0,node-name=t,writable=on")...)
	cmd.Stderr = os.Stderr
	benchutil.Check(cmd.Start())
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			panic(daemon + " did not start")
		}
	}
	out, err := exec.Command("fio", "--name=t", "--ioengine=nbd", "--uri=nbd+unix:///t?socket="+sock,
		"--rw="+c.rw, "--bs="+c.bs, "--iodepth=16", "--time_based", fmt.Sprintf("--runtime=%d", *seconds),
		"--ramp_time=1", "--output-format=json").Output()
	benchutil.Check(err)
	var r struct {
		Jobs []struct {
			Read, Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
			}
		} `json:"jobs"`
	}
	benchutil.Check(json.Unmarshal(out[strings.IndexByte(string(out), '{'):], &r))
	j := r.Jobs[0]
	if c.unit == "MiB/s" {
		return (j.Read.BW + j.Write.BW) / (1 << 20)
	}
	return j.Read.IOPS + j.Write.IOPS
}
