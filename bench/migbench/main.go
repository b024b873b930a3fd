// Command migbench measures live storage migration between two daemons
// of the same kind, blockd → blockd beside qemu-storage-daemon → qsd, in
// one run, alternating which goes first round by round.
//
// The source daemon opens a qcow2 chain (base ◀ mid ◀ top, built once,
// data over three quarters of the disk) and mirrors it (blockdev-mirror
// sync=full) into an nbd node that names a writable NBD export, over a
// UNIX socket, of a fresh qcow2 image in the destination daemon; the
// migration is timed from blockdev-mirror to BLOCK_JOB_COMPLETED after
// block-job-complete (pivot). MiB/s are of the data the chain allocates.
// The aim is the destination export's own sequential write rate: nbdcopy
// of the same amount of data from a page-cached raw file into the same
// kind of export, timed the same way, round by round. -pairs also runs
// the cross pairs (blockd:qsd, qsd:blockd), which tell the source's costs
// from the destination's; CPU is reported for each side. Every migration is
// checked once both daemons have exited: the destination passes
// qemu-img check and qemu-img compare finds it equal to the chain.
//
//	go run ./bench/migbench [-size 1G] [-rounds 5] [-blockd bin/blockd] [-dir /dev/shm] [-pairs blockd:blockd,qsd:qsd,blockd:qsd,qsd:blockd]
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
)

var (
	sizeFlag  = flag.String("size", "1G", "virtual size of the chain")
	rounds    = flag.Int("rounds", 5, "rounds per daemon (median reported)")
	blockdBin = flag.String("blockd", "bin/blockd", "blockd binary")
	blockd2   = flag.String("blockd2", "", "a second blockd binary, daemon kind blockd2 in -pairs (A/B of two builds, e.g. -pairs blockd:blockd,blockd2:blockd2)")
	tmpDir    = flag.String("dir", "", "where the images go (default $TMPDIR; /dev/shm takes the disk out of the figures)")
	only      = flag.String("only", "", "run one daemon kind only (blockd or qsd), for comparing builds; no ratio then")
	pairsFlag = flag.String("pairs", "blockd:blockd,qsd:qsd", "source:destination daemon kinds to migrate between, comma-separated (blockd:qsd and qsd:blockd split the source's costs from the destination's)")
	qsdHeap   = flag.Bool("qsd-heap", true, "run qsd with a fixed glibc mmap threshold, so its bounce buffers stay on the heap (its fast case; see jobbench)")
)

// pair is a source and a destination daemon kind.
type pair struct{ src, dst string }

func (p pair) String() string { return p.src + "→" + p.dst }

func parsePairs() []pair {
	if *only != "" {
		return []pair{{*only, *only}}
	}
	var ps []pair
	for _, s := range strings.Split(*pairsFlag, ",") {
		src, dst, ok := strings.Cut(strings.TrimSpace(s), ":")
		if !ok || !validKind(src) || !validKind(dst) {
			panic(fmt.Sprintf("-pairs: %q is not source:destination with blockd or qsd on each side", s))
		}
		ps = append(ps, pair{src, dst})
	}
	return ps
}

func validKind(k string) bool { return k == "blockd" || k == "qsd" || k == "blockd2" && *blockd2 != "" }

func main() {
	flag.Parse()
	pairs := parsePairs()
	dir, err := os.MkdirTemp(*tmpDir, "migbench")
	benchutil.Check(err)
	defer os.RemoveAll(dir)
	fmt.Printf("preparing a %s qcow2 chain...\n", *sizeFlag)
	size, data := makeChain(dir)
	raw := filepath.Join(dir, "data.raw")
	makeRaw(raw, data)
	fmt.Printf("chain: %.0f MiB allocated of %.0f MiB\n", mib(data), mib(size))

	mig := map[pair][]float64{}
	cpu := map[pair][]float64{}
	cpuSrc := map[pair][]float64{}
	cpuDst := map[pair][]float64{}
	aim := map[string][]float64{} // by destination kind
	for r := 0; r < *rounds; r++ {
		order := slices.Clone(pairs)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		aimed := map[string]bool{}
		for _, p := range order {
			secs, s, d := migrate(p, dir, r == 0)
			mig[p] = append(mig[p], mib(data)/secs)
			cpu[p] = append(cpu[p], s+d)
			cpuSrc[p] = append(cpuSrc[p], s)
			cpuDst[p] = append(cpuDst[p], d)
			w := ""
			if !aimed[p.dst] {
				aimed[p.dst] = true
				rate := writeRate(p.dst, dir, raw, data)
				aim[p.dst] = append(aim[p.dst], rate)
				w = fmt.Sprintf("; %s export's nbdcopy write %.0f MiB/s", p.dst, rate)
			}
			fmt.Printf("round %d %-13s migration %.2f s, %.0f MiB/s, CPU source %.2f s + destination %.2f s%s\n",
				r+1, p, secs, mib(data)/secs, s, d, w)
		}
	}
	fmt.Printf("\n%.0f MiB chain over a UNIX socket, medians of %d rounds\n", mib(data), *rounds)
	fmt.Printf("%-40s", "measure")
	for _, p := range pairs {
		fmt.Printf(" %13s", p)
	}
	ratio := len(pairs) >= 2 && pairs[0] == (pair{"blockd", "blockd"}) && pairs[1] == (pair{"qsd", "qsd"})
	if ratio {
		fmt.Printf(" %8s", "ratio")
	}
	fmt.Println()
	row := func(name string, m map[pair][]float64) {
		fmt.Printf("%-40s", name)
		for _, p := range pairs {
			fmt.Printf(" %13.2f", benchutil.Median(m[p]))
		}
		if ratio {
			fmt.Printf(" %8.2f", benchutil.Median(m[pairs[0]])/benchutil.Median(m[pairs[1]]))
		}
		fmt.Println()
	}
	row("migration (mirror to COMPLETED), MiB/s", mig)
	row("  CPU s of both daemons (lower)", cpu)
	row("  CPU s of the source", cpuSrc)
	row("  CPU s of the destination", cpuDst)
	aims := map[pair][]float64{}
	rel := map[pair][]float64{}
	for _, p := range pairs {
		aims[p] = aim[p.dst]
		rel[p] = []float64{benchutil.Median(mig[p]) / benchutil.Median(aim[p.dst])}
	}
	row("aim: nbdcopy into the export, MiB/s", aims)
	row("migration / aim", rel)
}

// migrate runs one migration from a daemon of kind p.src into one of kind
// p.dst and returns its seconds and the CPU seconds each daemon spent;
// verify checks the result with qemu-img.
func migrate(p pair, dir string, verify bool) (secs, srcCPU, dstCPU float64) {
	dst := filepath.Join(dir, "dst.qcow2")
	os.Remove(dst)
	benchutil.MustRun("qemu-img", "create", "-q", "-f", "qcow2", dst, *sizeFlag)
	d := startDaemon(p.dst, dir, "dst")
	defer d.Kill()
	sock := filepath.Join(dir, "dst-nbd.sock")
	os.Remove(sock)
	d.Cmd1("blockdev-add", qcow2Node("dst", dst, ""))
	d.Cmd1("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	d.Cmd1("block-export-add", map[string]any{"type": "nbd", "id": "dst", "node-name": "dst", "writable": true})

	s := startDaemon(p.src, dir, "src")
	defer s.Kill()
	s.Cmd1("blockdev-add", qcow2Node("base", filepath.Join(dir, "base.qcow2"), ""))
	s.Cmd1("blockdev-add", qcow2Node("mid", filepath.Join(dir, "mid.qcow2"), "base"))
	s.Cmd1("blockdev-add", qcow2Node("top", filepath.Join(dir, "top.qcow2"), "mid"))
	s.Cmd1("blockdev-add", map[string]any{"driver": "nbd", "node-name": "tgt", "export": "dst",
		"server": map[string]any{"type": "unix", "path": sock}})

	s0, d0 := benchutil.CPUSeconds(s.Cmd.Process.Pid), benchutil.CPUSeconds(d.Cmd.Process.Pid)
	start := time.Now()
	s.Cmd1("blockdev-mirror", map[string]any{"job-id": "mig", "device": "top", "target": "tgt", "sync": "full"})
	if ev, data := s.WaitEvent("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"); ev != "BLOCK_JOB_READY" {
		panic(fmt.Sprintf("%s: the mirror ended before READY: %v", p, data))
	}
	s.Cmd1("block-job-complete", map[string]any{"device": "mig"})
	if _, data := s.WaitEvent("BLOCK_JOB_COMPLETED"); data["error"] != nil {
		panic(fmt.Sprintf("%s: the mirror failed: %v", p, data["error"]))
	}
	secs = time.Since(start).Seconds()
	srcCPU = benchutil.CPUSeconds(s.Cmd.Process.Pid) - s0
	dstCPU = benchutil.CPUSeconds(d.Cmd.Process.Pid) - d0
	s.Quit()
	d.Quit()
	if verify {
		benchutil.MustRun("qemu-img", "check", "-q", dst)
		benchutil.MustRun("qemu-img", "compare", "-q", filepath.Join(dir, "top.qcow2"), dst)
	}
	return secs, srcCPU, dstCPU
}

// writeRate is nbdcopy's rate from raw (data bytes, in the page cache)
// into a writable export of a fresh qcow2 image in a daemon of kind,
// with a flush at the end as the migration's pivot has.
func writeRate(kind, dir, raw string, data int64) float64 {
	dst := filepath.Join(dir, "aim.qcow2")
	os.Remove(dst)
	benchutil.MustRun("qemu-img", "create", "-q", "-f", "qcow2", dst, *sizeFlag)
	d := startDaemon(kind, dir, "aim")
	defer d.Kill()
	sock := filepath.Join(dir, "aim-nbd.sock")
	os.Remove(sock)
	d.Cmd1("blockdev-add", qcow2Node("dst", dst, ""))
	d.Cmd1("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	d.Cmd1("block-export-add", map[string]any{"type": "nbd", "id": "dst", "node-name": "dst", "writable": true})
	benchutil.MustRun("cat", raw) // into the page cache, as the chain is
	start := time.Now()
	// --target-is-zero: the image is new, as the migration's target is
	// (whose mirror skips what the chain leaves unallocated).
	benchutil.MustRun("nbdcopy", "--target-is-zero", raw, "nbd+unix:///dst?socket="+sock)
	secs := time.Since(start).Seconds()
	d.Quit()
	return mib(data) / secs
}

func qcow2Node(name, path, backing string) map[string]any {
	o := map[string]any{"driver": "qcow2", "node-name": name,
		"file": map[string]any{"driver": "file", "filename": path}}
	if backing != "" {
		o["backing"] = backing
	}
	return o
}

// makeChain builds base.qcow2 ◀ mid.qcow2 ◀ top.qcow2 in dir: base has
// data over its first three quarters, mid over every other sixteenth of
// the first half, top a sixteenth at 1/32 and a thirty-second at 19/32.
// It returns the virtual size and the bytes the chain allocates.
func makeChain(dir string) (size, data int64) {
	img := func(n string) string { return filepath.Join(dir, n) }
	benchutil.MustRun("qemu-img", "create", "-q", "-f", "qcow2", img("base.qcow2"), *sizeFlag)
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", img("base.qcow2")).Output()
	benchutil.Check(err)
	benchutil.Check(json.Unmarshal(out, &info))
	size = info.VirtualSize
	u := size / 32
	benchutil.MustRun("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x11 0 %d", 24*u), img("base.qcow2"))
	benchutil.MustRun("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", img("mid.qcow2"))
	var mid []string
	for off := int64(0); off < size/2; off += 4 * u {
		mid = append(mid, "-c", fmt.Sprintf("write -P 0x22 %d %d", off, 2*u))
	}
	benchutil.MustRun("qemu-io", append([]string{"-f", "qcow2"}, append(mid, img("mid.qcow2"))...)...)
	benchutil.MustRun("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", img("top.qcow2"))
	benchutil.MustRun("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x33 %d %d", u, 2*u),
		"-c", fmt.Sprintf("write -P 0x44 %d %d", 19*u, u), img("top.qcow2"))
	out, err = exec.Command("qemu-img", "map", "--output=json", img("top.qcow2")).Output()
	benchutil.Check(err)
	var m []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	benchutil.Check(json.Unmarshal(out, &m))
	for _, e := range m {
		if e.Data {
			data += e.Length
		}
	}
	return size, data
}

// makeRaw writes a raw file of n bytes of non-zero data.
func makeRaw(path string, n int64) {
	benchutil.MustRun("qemu-img", "create", "-q", "-f", "raw", path, fmt.Sprint(n))
	benchutil.MustRun("qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x55 0 %d", n), path)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

type daemon = benchutil.Daemon

// startDaemon starts a daemon of kind whose QMP socket is named by role.
func startDaemon(kind, dir, role string) *daemon {
	sock := filepath.Join(dir, role+"-qmp.sock")
	os.Remove(sock)
	bin := *blockdBin
	var args []string
	if kind == "blockd2" {
		bin = *blockd2
	}
	if kind == "qsd" {
		bin = "qemu-storage-daemon"
	} else {
		args = append(args, "--log-level", "warn")
	}
	args = append(args, "--chardev", "socket,id=m0,path="+sock+",server=on,wait=off", "--monitor", "chardev=m0")
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if kind == "qsd" && *qsdHeap {
		cmd.Env = append(os.Environ(), "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=1073741824")
	}
	benchutil.Check(cmd.Start())
	return benchutil.Connect(kind+" "+role, cmd, sock)
}
