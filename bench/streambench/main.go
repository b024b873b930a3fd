// Command streambench measures block-stream in blockd against
// qemu-storage-daemon, in one run, alternating the two daemons. It builds
// a three-image qcow2 chain (base ◀ mid ◀ top) once, with seeded random
// data, and for every run streams a fresh copy of it:
//
//   - case a: block-stream top with base-node=base (copies mid's data)
//   - case b: block-stream top with no base (copies mid's and base's)
//
// Each run is timed from the block-stream command to BLOCK_JOB_COMPLETED,
// with the images in the page cache and the memory the daemon will write
// into faulted in beforehand (see faultIn). For both daemons it prints
// the job's seconds; the MiB/s of data actually copied (what the streamed
// images allocate and top does not override, from qemu-img map of the
// chain before the run), also for the fastest run, because qsd's runs
// fall in two groups on the build machine (see docs/benchmarks.md); the
// MiB/s of the virtual size; the daemon's CPU time during the job; its
// peak RSS; the time quit takes and the sum of job and quit; then the
// ratio blockd/qsd. The sum is the fair figure where the copied data must
// reach the disk: blockd flushes it before it completes the job (the new
// backing file may be named only then), qsd when it closes the image on
// quit. Every run is verified once the daemon has exited: qemu-img check
// of top is clean, top's backing file is what the case says, and qemu-img
// compare finds the streamed top identical to the original chain.
//
//	go run ./bench/streambench [-size 1G] [-rounds 3] [-blockd bin/blockd] [-prefault 2G]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var (
	sizeFlag  = flag.String("size", "1G", "virtual size of the chain")
	rounds    = flag.Int("rounds", 3, "rounds per daemon and case (median reported)")
	blockdBin = flag.String("blockd", "bin/blockd", "blockd binary")
	prefault  = flag.String("prefault", "2G", "memory to fault in and free before each stream (0: none)")
	qsdHeap   = flag.Bool("qsd-heap", true, "run qsd with a fixed glibc mmap threshold, so its bounce buffers stay on the heap (its fast case)")
	noFlush   = flag.Bool("no-flush", false, "open the images with cache.no-flush=on in both daemons: neither makes the copy durable, so the copy engines are compared alone")
)

// A streamCase is one way of streaming the chain.
type streamCase struct {
	name     string
	args     map[string]any // block-stream's arguments besides job-id and device
	minDepth int            // copied: what the chain allocates at depths minDepth..maxDepth
	maxDepth int
	backing  string // top's backing file afterwards ("" for none)
}

var cases = []streamCase{
	{"a: base-node=base (copies mid)", map[string]any{"base-node": "base"}, 1, 1, "base.qcow2"},
	{"b: whole chain (copies mid and base)", map[string]any{}, 1, 2, ""},
}

// result holds one daemon's figures for one case, a value per round.
type result struct{ secs, copied, virtual, cpu, rss, quit, total []float64 }

func main() {
	flag.Parse()
	dir, err := os.MkdirTemp("", "streambench")
	check(err)
	defer os.RemoveAll(dir)
	orig := filepath.Join(dir, "orig")
	check(os.Mkdir(orig, 0o755))
	fmt.Printf("preparing a %s qcow2 chain with seeded random data...\n", *sizeFlag)
	size := makeChain(orig)
	warm := parseSize(*prefault)
	top := filepath.Join(orig, "top.qcow2")
	copied := make([]int64, len(cases))
	for i, c := range cases {
		copied[i] = allocated(top, c.minDepth, c.maxDepth)
		fmt.Printf("case %s: %.0f MiB to copy of %.0f MiB\n", c.name, mib(copied[i]), mib(size))
	}

	res := map[string][]*result{}
	for _, name := range []string{"blockd", "qsd"} {
		for range cases {
			res[name] = append(res[name], &result{})
		}
	}
	for r := 0; r < *rounds; r++ {
		// Alternate which daemon goes first, so that neither always runs
		// on a machine the other has just warmed or loaded.
		order := []string{"blockd", "qsd"}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for i, c := range cases {
			for _, name := range order {
				x := res[name][i]
				secs, cpu, rss, quit := streamOnce(name, dir, orig, c, warm)
				x.secs = append(x.secs, secs)
				x.copied = append(x.copied, mib(copied[i])/secs)
				x.virtual = append(x.virtual, mib(size)/secs)
				x.cpu = append(x.cpu, cpu)
				x.rss = append(x.rss, rss)
				x.quit = append(x.quit, quit)
				x.total = append(x.total, secs+quit)
				fmt.Printf("round %d case %s %-6s %.2f s, %.0f MiB/s copied, CPU %.2f s, RSS %.0f MiB, quit %.2f s\n",
					r+1, c.name[:1], name, secs, mib(copied[i])/secs, cpu, rss, quit)
			}
		}
	}

	mode := "default cache: blockd makes the copy durable before it completes"
	if *noFlush {
		mode = "cache.no-flush=on in both daemons: neither flushes"
	}
	fmt.Printf("\nqcow2 chain of %s, %s; medians of %d rounds (higher is better unless noted)\n", *sizeFlag, mode, *rounds)
	for i, c := range cases {
		b, q := res["blockd"][i], res["qsd"][i]
		fmt.Printf("\ncase %s: %.0f MiB copied\n", c.name, mib(copied[i]))
		fmt.Printf("%-44s %10s %10s %8s\n", "measure", "blockd", "qsd", "ratio")
		row := func(name string, bv, qv []float64) {
			mb, mq := median(bv), median(qv)
			fmt.Printf("%-44s %10.2f %10.2f %8.2f\n", name, mb, mq, mb/mq)
		}
		row("block-stream to COMPLETED, s (lower)", b.secs, q.secs)
		row("  copied data, MiB/s", b.copied, q.copied)
		fmt.Printf("%-44s %10.2f %10.2f %8.2f\n", "  copied data, MiB/s, fastest run", slices.Max(b.copied), slices.Max(q.copied), slices.Max(b.copied)/slices.Max(q.copied))
		row("  virtual size, MiB/s", b.virtual, q.virtual)
		row("  daemon CPU s (lower)", b.cpu, q.cpu)
		row("daemon peak RSS, MiB (lower)", b.rss, q.rss)
		row("quit to exit, s (lower)", b.quit, q.quit)
		row("stream and quit, s (lower)", b.total, q.total)
	}
}

// makeChain builds base.qcow2 ◀ mid.qcow2 ◀ top.qcow2 in dir and returns
// their virtual size. Sizes below are for 1 GiB and scale with -size:
//
//	base: random data over 0-768M
//	mid:  random data in every other 64M block of 0-512M, plus 64 writes
//	      of 4-64K scattered over the whole disk
//	top:  random data in 16M at 32M (over mid and base) and 32M at 600M
//	      (over base), plus 32 scattered writes of 4-64K
//
// Each image is made standalone from a sparse raw file (qemu-img convert
// leaves holes unallocated) and then pointed at its backing file with an
// unsafe rebase, so what it does not allocate reads through. The data and
// offsets come from fixed seeds: every run streams the same chain.
func makeChain(dir string) int64 {
	raw := filepath.Join(dir, "base.raw")
	mustRun("qemu-img", "create", "-q", "-f", "raw", raw, *sizeFlag)
	st, err := os.Stat(raw)
	check(err)
	size := st.Size()
	os.Remove(raw)
	u := size / 16 // 64M of a 1G disk
	pos := rand.New(rand.NewPCG(1, 2))
	scatter := func(regions []region, count int) []region {
		for i := 0; i < count; i++ {
			n := int64(1+pos.IntN(16)) << 12
			off := pos.Int64N((size-n)>>12) << 12
			regions = append(regions, region{off, n})
		}
		return regions
	}
	layers := []struct {
		name, backing string
		regions       []region
	}{
		{"base", "", []region{{0, 12 * u}}},
		{"mid", "base", scatter([]region{{0, u}, {2 * u, u}, {4 * u, u}, {6 * u, u}}, 64)},
		{"top", "mid", scatter([]region{{u / 2, u / 4}, {size * 600 / 1024, u / 2}}, 32)},
	}
	for seed, l := range layers {
		raw := filepath.Join(dir, l.name+".raw")
		writeSparse(raw, size, l.regions, uint64(seed))
		img := filepath.Join(dir, l.name+".qcow2")
		mustRun("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, img)
		os.Remove(raw)
		if l.backing != "" {
			// Relative names: a copy of the directory is a chain of its own.
			mustRun("qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", l.backing+".qcow2", img)
		}
	}
	return size
}

type region struct{ off, n int64 }

// writeSparse makes a sparse file of size bytes with random data from a
// seeded generator in the regions and holes elsewhere.
func writeSparse(path string, size int64, regions []region, seed uint64) {
	f, err := os.Create(path)
	check(err)
	check(f.Truncate(size))
	var key [32]byte
	key[0] = byte(seed)
	gen := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	for _, r := range regions {
		for done := int64(0); done < r.n; done += int64(len(buf)) {
			b := buf[:min(int64(len(buf)), r.n-done)]
			gen.Read(b)
			_, err := f.WriteAt(b, r.off+done)
			check(err)
		}
	}
	check(f.Close())
}

// allocated is how many bytes of img's chain are allocated at depths
// lo..hi (0 is img itself), from qemu-img map: what a stream of those
// images copies into img.
func allocated(img string, lo, hi int) int64 {
	out, err := exec.Command("qemu-img", "map", "--output=json", img).Output()
	check(err)
	var m []struct {
		Length  int64 `json:"length"`
		Depth   int   `json:"depth"`
		Present *bool `json:"present"`
		Data    bool  `json:"data"`
		Zero    bool  `json:"zero"`
	}
	check(json.Unmarshal(out, &m))
	var n int64
	for _, e := range m {
		present := e.Data || e.Zero
		if e.Present != nil {
			present = *e.Present
		}
		if present && e.Depth >= lo && e.Depth <= hi {
			n += e.Length
		}
	}
	return n
}

// streamOnce copies the chain, streams it in one daemon and verifies the
// result. It returns the job's seconds, the daemon's CPU seconds during
// the job, its peak RSS in MiB and the seconds quit took.
func streamOnce(name, dir, orig string, c streamCase, warm int64) (secs, cpu, rss, quit float64) {
	run := filepath.Join(dir, "run")
	os.RemoveAll(run)
	check(os.Mkdir(run, 0o755))
	defer os.RemoveAll(run)
	var imgs []string
	for _, l := range []string{"base", "mid", "top"} {
		img := filepath.Join(run, l+".qcow2")
		mustRun("cp", "--reflink=auto", filepath.Join(orig, l+".qcow2"), img)
		imgs = append(imgs, img)
	}
	// The copies must not be written back while a daemon runs, and both
	// daemons read them from the page cache.
	mustRun("sync", imgs...)
	mustRun("cat", imgs...)

	d := startDaemon(name, dir)
	defer d.kill() // if a step below fails before quit
	pid := d.cmd.Process.Pid
	backing := map[string]string{"mid": "base", "top": "mid"}
	for _, n := range []string{"base", "mid", "top"} {
		o := map[string]any{"driver": "qcow2", "node-name": n,
			"file": map[string]any{"driver": "file", "filename": filepath.Join(run, n+".qcow2")}}
		if *noFlush {
			o["cache"] = map[string]any{"no-flush": true}
		}
		if b, ok := backing[n]; ok {
			o["backing"] = b
		}
		d.cmd1("blockdev-add", o)
	}
	args := map[string]any{"job-id": "s0", "device": "top"}
	for k, v := range c.args {
		args[k] = v
	}

	faultIn(warm)
	cpu0 := cpuSeconds(pid)
	t0 := time.Now()
	d.cmd1("block-stream", args)
	ev := d.waitEvent("BLOCK_JOB_COMPLETED")
	secs = time.Since(t0).Seconds()
	cpu = cpuSeconds(pid) - cpu0
	rss = peakRSS(pid)
	if e, ok := ev["error"]; ok {
		panic(fmt.Sprintf("%s: stream failed: %v", name, e))
	}

	t0 = time.Now()
	d.quit()
	quit = time.Since(t0).Seconds()

	verify(name, orig, run, c)
	return secs, cpu, rss, quit
}

// verify fails the benchmark unless the streamed top is a clean image
// with the expected backing file and the same data as the original chain.
func verify(name, orig, run string, c streamCase) {
	top := filepath.Join(run, "top.qcow2")
	if err := exec.Command("qemu-img", "check", "-q", top).Run(); err != nil {
		panic(fmt.Sprintf("%s, case %s: qemu-img check of the streamed top: %v", name, c.name, err))
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", top).Output()
	check(err)
	var info struct {
		Backing string `json:"backing-filename"`
	}
	check(json.Unmarshal(out, &info))
	if filepath.Base(info.Backing) != c.backing && !(c.backing == "" && info.Backing == "") {
		panic(fmt.Sprintf("%s, case %s: streamed top's backing file is %q, want %q", name, c.name, info.Backing, c.backing))
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
		filepath.Join(orig, "top.qcow2"), top).CombinedOutput(); err != nil {
		panic(fmt.Sprintf("%s, case %s: streamed top differs from the chain: %v\n%s", name, c.name, err, out))
	}
}

// faultIn maps n bytes of memory with every page faulted in, and frees
// them again. The freed pages are the first the kernel hands out next, so
// the page cache the stream writes and the daemon's buffers come from
// memory the machine has just backed. On a VM that returns free memory to
// its host (this one: free page reporting), the first touch of a returned
// page costs the toucher 2-5 s a GiB here, which would otherwise land on
// whichever daemon got such pages, and swamp the difference being measured.
func faultIn(n int64) {
	if n == 0 {
		return
	}
	b, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_ANON|syscall.MAP_PRIVATE|syscall.MAP_POPULATE)
	check(err)
	check(syscall.Munmap(b))
}

// parseSize reads a size with an optional K, M, G or T suffix (powers
// of 1024), as qemu-img does.
func parseSize(s string) int64 {
	mult := int64(1)
	if i := strings.IndexAny(s, "KMGTkmgt"); i >= 0 && i == len(s)-1 {
		mult = 1 << (10 * (1 + strings.IndexByte("KMGT", byte(strings.ToUpper(s[i:])[0]))))
		s = s[:i]
	}
	v, err := strconv.ParseInt(s, 10, 64)
	check(err)
	return v * mult
}

type daemon struct {
	name string
	cmd  *exec.Cmd
	conn net.Conn
	dec  *json.Decoder
	ev   []map[string]any // events not yet waited for
}

func startDaemon(name, dir string) *daemon {
	sock := filepath.Join(dir, name+"-qmp.sock")
	os.Remove(sock)
	bin := *blockdBin
	var args []string
	if name == "qsd" {
		bin = "qemu-storage-daemon"
	} else {
		args = append(args, "--log-level", "warn")
	}
	args = append(args,
		"--chardev", "socket,id=m0,path="+sock+",server=on,wait=off",
		"--monitor", "chardev=m0")
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if name == "qsd" && *qsdHeap {
		// qsd copies through 512 KiB bounce buffers; when glibc hands
		// them out as fresh mmaps every copy faults in its pages (one
		// fault per 4 KiB), which made qsd 6-9x slower in some runs and
		// not in others. A fixed mmap threshold above that size keeps
		// them on the heap: qsd's best case, every run.
		cmd.Env = append(os.Environ(), "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=1073741824")
	}
	check(cmd.Start())
	var conn net.Conn
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			panic(name + " did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := &daemon{name: name, cmd: cmd, conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	var greeting map[string]any
	check(d.dec.Decode(&greeting))
	d.cmd1("qmp_capabilities", nil)
	return d
}

// cmd1 runs one QMP command and panics if it fails; events that arrive
// meanwhile are kept for waitEvent.
func (d *daemon) cmd1(name string, args any) {
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	check(err)
	_, err = d.conn.Write(append(b, '\n'))
	check(err)
	for {
		var m map[string]any
		check(d.dec.Decode(&m))
		switch {
		case m["event"] != nil:
			d.ev = append(d.ev, m)
		case m["error"] != nil:
			panic(fmt.Sprintf("%s: %s %s: %v", d.name, name, b, m["error"]))
		default:
			return
		}
	}
}

// waitEvent returns the data of the next event called name.
func (d *daemon) waitEvent(name string) map[string]any {
	for {
		var m map[string]any
		if len(d.ev) > 0 {
			m, d.ev = d.ev[0], d.ev[1:]
		} else {
			check(d.dec.Decode(&m))
		}
		if m["event"] == name {
			data, _ := m["data"].(map[string]any)
			return data
		}
	}
}

// quit asks the daemon to exit and waits until it has (both close, and
// so flush, their images on the way out).
func (d *daemon) quit() {
	req := []byte(`{"execute": "quit"}` + "\n")
	_, err := d.conn.Write(req)
	check(err)
	io.Copy(io.Discard, d.conn) // the reply, then EOF when it exits
	d.conn.Close()
	if err := d.cmd.Wait(); err != nil {
		panic(fmt.Sprintf("%s: %v", d.name, err))
	}
}

// kill stops a daemon that has not exited yet.
func (d *daemon) kill() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Kill()
		d.cmd.Wait()
	}
}

// cpuSeconds is the user+system CPU time of a process so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	check(err)
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// peakRSS is a process's peak resident set size so far (VmHWM), in MiB.
func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	check(err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			check(err)
			return kb / 1024
		}
	}
	panic("no VmHWM in /proc/" + strconv.Itoa(pid) + "/status")
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func mustRun(name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		panic(fmt.Sprintf("%s %v: %v", name, args, err))
	}
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}
