// Command nbdbench measures blockd's NBD exports against
// qemu-storage-daemon's on the same image, in one run, alternating the two
// daemons: sequential read with nbdcopy, qemu-img convert of the export,
// and 4 KiB random reads at queue depth 16 with fio's nbd engine. For each
// it prints both figures, the daemons' CPU time, and the ratio blockd/qsd.
//
//	go run ./bench/nbdbench [-size 1G] [-rounds 3] [-fio-seconds 10] [-blockd bin/blockd]
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
	sizeFlag   = flag.String("size", "1G", "image size")
	rounds     = flag.Int("rounds", 3, "rounds per daemon (median reported)")
	fioSeconds = flag.Int("fio-seconds", 10, "seconds per fio run")
	blockdBin  = flag.String("blockd", "bin/blockd", "blockd binary")
	format     = flag.String("format", "raw", "image format (raw or qcow2)")
)

type daemon struct {
	name string
	cmd  *exec.Cmd
	sock string
}

func main() {
	flag.Parse()
	dir, err := os.MkdirTemp("", "nbdbench")
	benchutil.Check(err)
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "disk.img")
	fmt.Printf("preparing a %s %s image with random data...\n", *sizeFlag, *format)
	benchutil.MustRun("qemu-img", "create", "-q", "-f", *format, img, *sizeFlag)
	size := imageSize(img)
	// Random data, fully allocated, so every read touches real data.
	benchutil.MustRun("qemu-img", "convert", "-n", "-f", "raw", "-O", *format, randomSource(dir, size), img)
	// Warm the page cache so both daemons read from memory.
	benchutil.MustRun("cat", img)

	type result struct{ seq, seqCPU, conv, convCPU, iops, randCPUPerGiB []float64 }
	res := map[string]*result{"blockd": {}, "qsd": {}}
	for r := 0; r < *rounds; r++ {
		for _, name := range []string{"blockd", "qsd"} {
			d := startDaemon(name, dir, img)
			uri := "nbd+unix:///disk?socket=" + d.sock
			x := res[name]

			cpu0 := benchutil.CPUSeconds(d.cmd.Process.Pid)
			t0 := time.Now()
			benchutil.MustRun("nbdcopy", uri, "null:")
			el := time.Since(t0).Seconds()
			x.seq = append(x.seq, float64(size)/el/(1<<20))
			x.seqCPU = append(x.seqCPU, benchutil.CPUSeconds(d.cmd.Process.Pid)-cpu0)

			out := filepath.Join(dir, "out.raw")
			cpu0 = benchutil.CPUSeconds(d.cmd.Process.Pid)
			t0 = time.Now()
			benchutil.MustRun("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
			el = time.Since(t0).Seconds()
			x.conv = append(x.conv, float64(size)/el/(1<<20))
			x.convCPU = append(x.convCPU, benchutil.CPUSeconds(d.cmd.Process.Pid)-cpu0)
			os.Remove(out)

			cpu0 = benchutil.CPUSeconds(d.cmd.Process.Pid)
			iops, bytes := fioRandRead(uri)
			cpu := benchutil.CPUSeconds(d.cmd.Process.Pid) - cpu0
			x.iops = append(x.iops, iops)
			x.randCPUPerGiB = append(x.randCPUPerGiB, cpu/(float64(bytes)/(1<<30)))
			d.stop()
			fmt.Printf("round %d %-6s seq %.0f MiB/s, convert %.0f MiB/s, randread %.0f IOPS\n", r+1, name, x.seq[r], x.conv[r], x.iops[r])
		}
	}
	b, q := res["blockd"], res["qsd"]
	fmt.Printf("\n%s image of %s, medians of %d rounds (higher is better unless noted)\n", *format, *sizeFlag, *rounds)
	fmt.Printf("%-40s %12s %12s %8s\n", "measure", "blockd", "qsd", "ratio")
	row := func(name string, bv, qv []float64) {
		mb, mq := benchutil.Median(bv), benchutil.Median(qv)
		fmt.Printf("%-40s %12.2f %12.2f %8.2f\n", name, mb, mq, mb/mq)
	}
	row("nbdcopy sequential read (MiB/s)", b.seq, q.seq)
	row("  daemon CPU seconds (lower is better)", b.seqCPU, q.seqCPU)
	row("qemu-img convert (MiB/s)", b.conv, q.conv)
	row("  daemon CPU seconds (lower is better)", b.convCPU, q.convCPU)
	row("fio 4k randread qd16 (IOPS)", b.iops, q.iops)
	row("  daemon CPU s per GiB (lower is better)", b.randCPUPerGiB, q.randCPUPerGiB)
}

// randomSource makes a file of random data to convert from.
func randomSource(dir string, size int64) string {
	src := filepath.Join(dir, "random.raw")
	f, err := os.Create(src)
	benchutil.Check(err)
	r, err := os.Open("/dev/urandom")
	benchutil.Check(err)
	buf := make([]byte, 1<<20)
	for done := int64(0); done < size; done += int64(len(buf)) {
		_, err := r.Read(buf)
		benchutil.Check(err)
		_, err = f.Write(buf[:min(int64(len(buf)), size-done)])
		benchutil.Check(err)
	}
	f.Close()
	r.Close()
	return src
}

func startDaemon(name, dir, img string) *daemon {
	sock := filepath.Join(dir, name+"-nbd.sock")
	os.Remove(sock)
	args := []string{
		"--blockdev", fmt.Sprintf("driver=%s,node-name=disk,read-only=on,file.driver=file,file.filename=%s", *format, img),
		"--nbd-server", "addr.type=unix,addr.path=" + sock,
		"--export", "type=nbd,id=e0,node-name=disk,name=disk",
	}
	bin := *blockdBin
	if name == "qsd" {
		bin = "qemu-storage-daemon"
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	benchutil.Check(cmd.Start())
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			panic(name + " did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &daemon{name: name, cmd: cmd, sock: sock}
}

func (d *daemon) stop() {
	d.cmd.Process.Signal(os.Interrupt)
	d.cmd.Wait()
}

func fioRandRead(uri string) (iops float64, bytes int64) {
	out, err := exec.Command("fio", "--name=rr", "--ioengine=nbd", "--uri="+uri, "--rw=randread", "--bs=4k",
		"--iodepth=16", "--time_based", fmt.Sprintf("--runtime=%d", *fioSeconds), "--output-format=json").Output()
	benchutil.Check(err)
	var r struct {
		Jobs []struct {
			Read struct {
				IOPS    float64 `json:"iops"`
				IOBytes int64   `json:"io_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	benchutil.Check(json.Unmarshal(out[strings.IndexByte(string(out), '{'):], &r))
	return r.Jobs[0].Read.IOPS, r.Jobs[0].Read.IOBytes
}

func imageSize(img string) int64 {
	out, err := exec.Command("qemu-img", "info", "--output=json", img).Output()
	benchutil.Check(err)
	var v struct {
		Size int64 `json:"virtual-size"`
	}
	benchutil.Check(json.Unmarshal(out, &v))
	return v.Size
}
