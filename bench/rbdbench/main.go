// Command rbdbench measures blockd's rbd driver against
// qemu-storage-daemon's on a one-node Ceph cluster it starts itself
// (internal/cephtest: one monitor, one memstore OSD, all on loopback), in
// one run, alternating the daemons round by round (and which goes first
// in a round):
//
//   - 4 KiB random reads and random writes at queue depth 16 through an
//     NBD export of an rbd node, with fio's nbd engine;
//   - a full mirror of a fully allocated local qcow2 image into an empty
//     rbd image (blockdev-mirror, sync=full), timed to BLOCK_JOB_READY.
//
// Before the first round the OSD is made to hold as much data as a mirror
// writes once, and the image removed: a memstore OSD's first fill of its
// memory costs it several times the CPU of later ones, which made
// whichever daemon mirrored first look three times slower.
//
// It prints each daemon's median with the spread (lowest..highest), its
// CPU time (per I/O for fio, per run for the mirror), and blockd's ratio.
// blockd must be built with rbd support (make build does, where librbd's
// headers are installed; or go build -tags ceph ./cmd/blockd).
//
//	go run ./bench/rbdbench [-blockd bin/blockd] [-rounds 5] [-fio-seconds 10] [-mirror-size 1G]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/blockd/blockd/bench/internal/benchutil"
	"github.com/blockd/blockd/internal/cephtest"
)

var (
	blockdBin  = flag.String("blockd", "bin/blockd", "blockd binary (built with -tags ceph)")
	rounds     = flag.Int("rounds", 5, "rounds per daemon (median reported)")
	fioSeconds = flag.Int("fio-seconds", 10, "seconds per fio run")
	fioSize    = flag.String("fio-size", "256M", "size of the image fio works on")
	mirrorSize = flag.String("mirror-size", "1G", "size of the qcow2 image mirrored into rbd")
)

var daemons = []string{"blockd", "qsd"}

func main() {
	flag.Parse()
	if why := cephtest.Available(); why != "" {
		fmt.Println("rbdbench: no Ceph cluster:", why)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "rbdbench")
	benchutil.Check(err)
	defer os.RemoveAll(dir)
	c, err := cephtest.StartSized(filepath.Join(dir), 4<<30)
	benchutil.Check(err)
	defer c.Stop()

	// The fio image, written once all through so that reads reach the OSD.
	_, err = c.RBD("create", "--size", *fioSize, "rbd/fio")
	benchutil.Check(err)
	_, err = c.RBD("bench", "--io-type", "write", "--io-size", "4M", "--io-pattern", "seq", "--io-total", *fioSize, "rbd/fio")
	benchutil.Check(err)

	// Warm the OSD up (see above).
	_, err = c.RBD("create", "--size", *mirrorSize, "rbd/warm")
	benchutil.Check(err)
	_, err = c.RBD("bench", "--io-type", "write", "--io-size", "4M", "--io-pattern", "seq", "--io-total", *mirrorSize, "rbd/warm")
	benchutil.Check(err)
	_, err = c.RBD("rm", "--no-progress", "rbd/warm")
	benchutil.Check(err)

	mirrorSrc := filepath.Join(dir, "src.qcow2")
	benchutil.MustRun("qemu-img", "create", "-q", "-f", "qcow2", mirrorSrc, *mirrorSize)
	benchutil.MustRun("qemu-io", "-c", "write -P 0x5a 0 "+*mirrorSize, mirrorSrc)

	type result struct{ read, write, readCPU, writeCPU, mirror, mirrorCPU []float64 }
	res := map[string]*result{}
	for _, name := range daemons {
		res[name] = &result{}
	}
	for r := 0; r < *rounds; r++ {
		order := daemons
		if r%2 == 1 {
			order = []string{daemons[1], daemons[0]}
		}
		for _, name := range order {
			x := res[name]
			d := startDaemon(name, dir, c)
			d.Cmd1("blockdev-add", map[string]any{"driver": "rbd", "node-name": "disk", "pool": "rbd", "image": "fio", "conf": c.Conf})
			sock := filepath.Join(dir, name+"-nbd.sock")
			os.Remove(sock)
			d.Cmd1("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
			d.Cmd1("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "disk", "writable": true})
			uri := "nbd+unix:///disk?socket=" + sock
			perIO := func(cpu, iops float64) float64 { return cpu / (iops * float64(*fioSeconds)) * 1e6 }
			cpu0 := benchutil.CPUSeconds(d.Cmd.Process.Pid)
			iops := fio(uri, "randread")
			cpu1 := benchutil.CPUSeconds(d.Cmd.Process.Pid)
			x.read, x.readCPU = append(x.read, iops), append(x.readCPU, perIO(cpu1-cpu0, iops))
			iops = fio(uri, "randwrite")
			cpu2 := benchutil.CPUSeconds(d.Cmd.Process.Pid)
			x.write, x.writeCPU = append(x.write, iops), append(x.writeCPU, perIO(cpu2-cpu1, iops))
			d.Quit()

			img := fmt.Sprintf("mirror-%s-%d", name, r)
			_, err := c.RBD("create", "--size", *mirrorSize, "rbd/"+img)
			benchutil.Check(err)
			d = startDaemon(name, dir, c)
			d.Cmd1("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "src", "file": map[string]any{"driver": "file", "filename": mirrorSrc}})
			d.Cmd1("blockdev-add", map[string]any{"driver": "rbd", "node-name": "tgt", "pool": "rbd", "image": img, "conf": c.Conf})
			cpu0 = benchutil.CPUSeconds(d.Cmd.Process.Pid)
			t0 := time.Now()
			d.Cmd1("blockdev-mirror", map[string]any{"job-id": "m", "device": "src", "target": "tgt", "sync": "full"})
			if ev, data := d.WaitEvent("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"); ev != "BLOCK_JOB_READY" {
				panic(fmt.Sprintf("%s: mirror ended early: %v", name, data))
			}
			secs := time.Since(t0).Seconds()
			x.mirrorCPU = append(x.mirrorCPU, benchutil.CPUSeconds(d.Cmd.Process.Pid)-cpu0)
			x.mirror = append(x.mirror, float64(imgBytes(*mirrorSize))/(1<<20)/secs)
			d.Cmd1("block-job-cancel", map[string]any{"device": "m"})
			d.WaitEvent("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
			d.Quit()
			_, err = c.RBD("rm", "--no-progress", "rbd/"+img)
			benchutil.Check(err)
		}
	}
	row := func(label, unit string, get func(*result) []float64, lower bool) {
		bv, qv := get(res["blockd"]), get(res["qsd"])
		b, q := benchutil.Median(bv), benchutil.Median(qv)
		ratio := b / q
		if lower {
			ratio = q / b
		}
		spread := func(v []float64) string {
			return fmt.Sprintf("(%.4g..%.4g)", slices.Min(v), slices.Max(v))
		}
		fmt.Printf("%-36s blockd %8.1f %-13s qsd %8.1f %-13s %-6s blockd/qsd %.2fx\n", label, b, spread(bv), q, spread(qv), unit, ratio)
	}
	fmt.Printf("rbd on a one-node cluster (memstore OSD, loopback), %d rounds, medians (lowest..highest)\n", *rounds)
	row(fmt.Sprintf("fio 4k randread qd16 (%s image)", *fioSize), "IOPS", func(r *result) []float64 { return r.read }, false)
	row("  daemon CPU per I/O", "us", func(r *result) []float64 { return r.readCPU }, true)
	row("fio 4k randwrite qd16", "IOPS", func(r *result) []float64 { return r.write }, false)
	row("  daemon CPU per I/O", "us", func(r *result) []float64 { return r.writeCPU }, true)
	row(fmt.Sprintf("mirror %s qcow2 -> rbd, to READY", *mirrorSize), "MiB/s", func(r *result) []float64 { return r.mirror }, false)
	row("  daemon CPU", "s", func(r *result) []float64 { return r.mirrorCPU }, true)
}

func fio(uri, rw string) float64 {
	out, err := exec.Command("fio", "--name=rbd", "--ioengine=nbd", "--uri="+uri, "--rw="+rw, "--bs=4k",
		"--iodepth=16", "--time_based", fmt.Sprintf("--runtime=%d", *fioSeconds), "--output-format=json").Output()
	benchutil.Check(err)
	var r struct {
		Jobs []struct {
			Read  struct{ IOPS float64 } `json:"read"`
			Write struct{ IOPS float64 } `json:"write"`
		} `json:"jobs"`
	}
	benchutil.Check(json.Unmarshal(out[strings.IndexByte(string(out), '{'):], &r))
	if rw == "randread" {
		return r.Jobs[0].Read.IOPS
	}
	return r.Jobs[0].Write.IOPS
}

func imgBytes(s string) int64 {
	var n int64
	var unit string
	fmt.Sscanf(s, "%d%s", &n, &unit)
	switch strings.ToUpper(unit) {
	case "K":
		return n << 10
	case "M":
		return n << 20
	case "G":
		return n << 30
	}
	return n
}

type daemon = benchutil.Daemon

func startDaemon(name, dir string, c *cephtest.Cluster) *daemon {
	sock := filepath.Join(dir, name+"-qmp.sock")
	os.Remove(sock)
	bin, args := *blockdBin, []string{"--log-level", "warn"}
	if name == "qsd" {
		bin, args = "qemu-storage-daemon", nil
	}
	args = append(args, "--chardev", "socket,id=m0,path="+sock+",server=on,wait=off", "--monitor", "chardev=m0")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), c.Env())
	log, err := os.Create(filepath.Join(dir, name+".log"))
	benchutil.Check(err)
	cmd.Stdout, cmd.Stderr = log, log
	benchutil.Check(cmd.Start())
	log.Close()
	return benchutil.Connect(name, cmd, sock)
}
