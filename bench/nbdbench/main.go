// Command nbdbench measures blockd's NBD exports against nbdkit's file
// plugin (the NBD server the field measures itself against; raw images
// only, since nbdkit serves no qcow2) and qemu-storage-daemon, on the same
// image in one run, alternating the servers round by round: sequential
// read with nbdcopy into null:, sequential write with nbdcopy from a
// page-cached file, and 4 KiB random reads at queue depth 16 with fio's
// nbd engine. For each it prints every server's median, the server's CPU
// seconds per GiB moved, and blockd's ratio to each of the others.
//
//	go run ./bench/nbdbench [-size 1G] [-rounds 5] [-fio-seconds 10] [-format raw|qcow2] [-convert]
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
	rounds     = flag.Int("rounds", 5, "rounds per server (median reported)")
	fioSeconds = flag.Int("fio-seconds", 10, "seconds per fio run")
	blockdBin  = flag.String("blockd", "bin/blockd", "blockd binary")
	format     = flag.String("format", "raw", "image format (raw or qcow2)")
	convert    = flag.Bool("convert", false, "also time qemu-img convert from the export (bound by qemu-img's own copy loop)")
)

// A measure is one figure taken from every server each round.
type measure struct {
	name  string
	unit  string
	lower bool // lower is better
}

var measures = []measure{
	{"nbdcopy sequential read", "MiB/s", false},
	{"  server CPU s per GiB", "s", true},
	{"nbdcopy sequential write", "MiB/s", false},
	{"  server CPU s per GiB", "s", true},
	{"fio 4k randread qd16", "IOPS", false},
	{"  server CPU s per GiB", "s", true},
	{"qemu-img convert from the export", "MiB/s", false},
	{"  server CPU s per GiB", "s", true},
}

type server struct {
	name string
	cmd  *exec.Cmd
	uri  string
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
	src := randomSource(dir, size)
	// Random data, fully allocated, so every read touches real data.
	benchutil.MustRun("qemu-img", "convert", "-n", "-f", "raw", "-O", *format, src, img)

	names := []string{"blockd", "nbdkit", "qsd"}
	if *format != "raw" {
		names = []string{"blockd", "qsd"}
	}
	if _, err := exec.LookPath("nbdkit"); err != nil && *format == "raw" {
		fmt.Println("nbdkit is missing (Debian package nbdkit): measuring blockd and qsd only")
		names = []string{"blockd", "qsd"}
	}
	res := map[string][][]float64{}
	for _, n := range names {
		res[n] = make([][]float64, len(measures))
	}
	for r := 0; r < *rounds; r++ {
		for _, name := range names {
			s := start(name, dir, img)
			x := res[name]
			add := func(i int, v float64) { x[i] = append(x[i], v) }
			timed := func(i int, bytes float64, run func()) {
				cpu0 := benchutil.CPUSeconds(s.cmd.Process.Pid)
				t0 := time.Now()
				run()
				el := time.Since(t0).Seconds()
				add(i, bytes/el/(1<<20))
				add(i+1, (benchutil.CPUSeconds(s.cmd.Process.Pid)-cpu0)/(bytes/(1<<30)))
			}
			// This machine's kernel reclaims cold page cache (DAMON), so
			// the files are read again before each measure: every server
			// reads from memory, none from the disk.
			warm := func() { benchutil.MustRun("cat", img, src) }
			warm()
			timed(0, float64(size), func() { benchutil.MustRun("nbdcopy", s.uri, "null:") })
			warm()
			timed(2, float64(size), func() { benchutil.MustRun("nbdcopy", src, s.uri) })
			warm()
			cpu0 := benchutil.CPUSeconds(s.cmd.Process.Pid)
			iops, bytes := fioRandRead(s.uri)
			add(4, iops)
			add(5, (benchutil.CPUSeconds(s.cmd.Process.Pid)-cpu0)/(float64(bytes)/(1<<30)))
			if *convert {
				out := filepath.Join(dir, "out.raw")
				timed(6, float64(size), func() { benchutil.MustRun("qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, out) })
				os.Remove(out)
			}
			s.stop()
			fmt.Printf("round %d %-6s read %.0f MiB/s, write %.0f MiB/s, randread %.0f IOPS\n", r+1, name, x[0][r], x[2][r], x[4][r])
		}
	}

	fmt.Printf("\n%s image of %s, medians of %d rounds\n", *format, *sizeFlag, *rounds)
	fmt.Printf("%-36s", "measure")
	for _, n := range names {
		fmt.Printf(" %10s", n)
	}
	for _, n := range names[1:] {
		fmt.Printf(" %10s", "blockd/"+n)
	}
	fmt.Println()
	for i, m := range measures {
		if len(res["blockd"][i]) == 0 {
			continue
		}
		label := m.name + " (" + m.unit + ")"
		if m.lower {
			label = m.name + " (lower is better)"
		}
		fmt.Printf("%-36s", label)
		med := map[string]float64{}
		for _, n := range names {
			med[n] = benchutil.Median(res[n][i])
			fmt.Printf(" %10.2f", med[n])
		}
		for _, n := range names[1:] {
			fmt.Printf(" %10.2f", med["blockd"]/med[n])
		}
		fmt.Println()
	}
}

// randomSource makes a file of random data to copy from.
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

// start runs one server exporting img writable on a UNIX socket.
func start(name, dir, img string) *server {
	sock := filepath.Join(dir, name+"-nbd.sock")
	os.Remove(sock)
	uri := "nbd+unix:///disk?socket=" + sock
	var cmd *exec.Cmd
	switch name {
	case "nbdkit":
		// -f: stay in the foreground, so the process is the server.
		cmd = exec.Command("nbdkit", "-f", "-U", sock, "-e", "disk", "file", img)
	default:
		bin := *blockdBin
		if name == "qsd" {
			bin = "qemu-storage-daemon"
		}
		cmd = exec.Command(bin,
			"--blockdev", fmt.Sprintf("driver=%s,node-name=disk,file.driver=file,file.filename=%s", *format, img),
			"--nbd-server", "addr.type=unix,addr.path="+sock,
			"--export", "type=nbd,id=e0,node-name=disk,name=disk,writable=on")
	}
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
	return &server{name: name, cmd: cmd, uri: uri}
}

func (s *server) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
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
