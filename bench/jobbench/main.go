// Command jobbench measures the block jobs of blockd against
// qemu-storage-daemon, in one run, alternating the two daemons. It builds
// its images once, with seeded random data, and for every run gives the
// job a fresh copy of them: a three-image qcow2 chain (base ◀ mid ◀ top)
// a single qcow2 image with 10% of its clusters allocated, an image
// whose persistent bitmap marks 10% of it changed since its last full
// backup, and a half-allocated image of compressible data (text.qcow2).
// The cases (see cases.go) are block-stream, intermediate and active
// block-commit, blockdev-mirror of the chain and of the sparse image into
// a new qcow2, and blockdev-backup: full, of the chain; incremental, into
// an overlay of the last full backup; plain and with compress=true, of
// text.qcow2.
//
// Each run is timed from the job's command to its first milestone:
// BLOCK_JOB_COMPLETED for the jobs that end by themselves, BLOCK_JOB_READY
// for active commit and mirror, which are then completed (pivot) and
// timed again to BLOCK_JOB_COMPLETED. The images are in the page cache and
// the memory the daemon will write into is faulted in beforehand (see
// faultIn). For both daemons it prints the job's seconds; the MiB/s of
// data actually copied (what the chain allocates in the layers the job
// copies, from qemu-img map before the run), also for the fastest run;
// the daemon's CPU time during the job and per GiB copied; its peak RSS;
// the time quit takes; then the ratio blockd/qsd. Every run is verified
// once the daemon has exited: qemu-img check of the images the job wrote
// is clean, backing files are what the case says, and qemu-img compare
// finds the result identical to the original chain.
//
//	go run ./bench/jobbench [-cases stream,commit,mirror] [-size 1G] [-rounds 3] [-blockd bin/blockd]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/blockd/blockd/bench/internal/benchutil"
)

var (
	sizeFlag  = flag.String("size", "1G", "virtual size of the images")
	rounds    = flag.Int("rounds", 3, "rounds per daemon and case (median reported)")
	blockdBin = flag.String("blockd", "bin/blockd", "blockd binary")
	caseFlag  = flag.String("cases", "", "comma-separated case names or prefixes (stream, commit, mirror-full ...); empty: all")
	prefault  = flag.String("prefault", "2G", "memory to fault in and free before each job (0: none)")
	qsdHeap   = flag.Bool("qsd-heap", true, "run qsd with a fixed glibc mmap threshold, so its bounce buffers stay on the heap (its fast case)")
	perfDir   = flag.String("perf", "", "record each daemon with perf record -g during the job, into DIR/<daemon>-<case>-<round>.data")
	textFrom  = flag.String("text-from", "", "fill the compressible image (backup cases) with the files under DIR instead of 4-bit random data")
	targetOpt = flag.String("target-o", "", "qemu-img create -o options of the target images (compression_type=zstd ...)")
	noFlush   = flag.Bool("no-flush", false, "open the images with cache.no-flush=on in both daemons: neither makes the copy durable, so the copy engines are compared alone")
)

// result holds one daemon's figures for one case, a value per round.
type result struct{ secs, copied, cpu, cpuGiB, rss, finish, quit, total, target []float64 }

func main() {
	flag.Parse()
	selected := selectCases(*caseFlag)
	if len(selected) == 0 {
		fmt.Fprintf(os.Stderr, "jobbench: no case matches %q; cases: %s\n", *caseFlag, caseNames())
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "jobbench")
	benchutil.Check(err)
	defer os.RemoveAll(dir)
	orig := filepath.Join(dir, "orig")
	benchutil.Check(os.Mkdir(orig, 0o755))
	fmt.Printf("preparing %s qcow2 images with seeded random data...\n", *sizeFlag)
	size := makeImages(orig)
	warm := parseSize(*prefault)
	copied := make([]int64, len(selected))
	for i, c := range selected {
		copied[i] = c.copied(orig)
		fmt.Printf("case %s: %.0f MiB to copy of %.0f MiB\n", c.name, mib(copied[i]), mib(size))
	}

	res := map[string][]*result{}
	for _, name := range []string{"blockd", "qsd"} {
		for range selected {
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
		for i, c := range selected {
			for _, name := range order {
				m := runOnce(name, dir, orig, c, size, warm)
				x := res[name][i]
				x.add(m, copied[i])
				fmt.Printf("round %d %-14s %-6s %.2f s, %.0f MiB/s copied, CPU %.2f s, RSS %.0f MiB, finish %.2f s, quit %.2f s\n",
					r+1, c.name, name, m.secs, mib(copied[i])/m.secs, m.cpu, m.rss, m.finish, m.quit)
			}
		}
	}
	report(selected, copied, res)
}

func (x *result) add(m measured, copied int64) {
	x.secs = append(x.secs, m.secs)
	x.copied = append(x.copied, mib(copied)/m.secs)
	x.cpu = append(x.cpu, m.cpu)
	x.cpuGiB = append(x.cpuGiB, m.cpu/(mib(copied)/1024))
	x.rss = append(x.rss, m.rss)
	x.finish = append(x.finish, m.finish)
	x.quit = append(x.quit, m.quit)
	x.total = append(x.total, m.secs+m.finish+m.quit)
	x.target = append(x.target, m.target)
}

// report prints, for every case, the medians of both daemons and their
// ratio.
func report(selected []jobCase, copied []int64, res map[string][]*result) {
	mode := "default cache: every daemon flushes where its job does"
	if *noFlush {
		mode = "cache.no-flush=on in both daemons: neither flushes"
	}
	fmt.Printf("\nimages of %s, %s; medians of %d rounds (higher is better unless noted)\n", *sizeFlag, mode, *rounds)
	for i, c := range selected {
		b, q := res["blockd"][i], res["qsd"][i]
		fmt.Printf("\ncase %s (%s): %.0f MiB copied\n", c.name, c.about, mib(copied[i]))
		fmt.Printf("%-44s %10s %10s %8s\n", "measure", "blockd", "qsd", "ratio")
		row := func(name string, bv, qv []float64) {
			mb, mq := benchutil.Median(bv), benchutil.Median(qv)
			fmt.Printf("%-44s %10.2f %10.2f %8.2f\n", name, mb, mq, mb/mq)
		}
		row(fmt.Sprintf("%s to %s, s (lower)", c.command, c.until), b.secs, q.secs)
		row("  copied data, MiB/s", b.copied, q.copied)
		fmt.Printf("%-44s %10.2f %10.2f %8.2f\n", "  copied data, MiB/s, fastest run",
			slices.Max(b.copied), slices.Max(q.copied), slices.Max(b.copied)/slices.Max(q.copied))
		row("  daemon CPU s (lower)", b.cpu, q.cpu)
		row("  daemon CPU s per GiB copied (lower)", b.cpuGiB, q.cpuGiB)
		row("daemon peak RSS, MiB (lower)", b.rss, q.rss)
		if c.until == "BLOCK_JOB_READY" {
			row("complete to COMPLETED, s (lower)", b.finish, q.finish)
		}
		row("quit to exit, s (lower)", b.quit, q.quit)
		row("job, finish and quit, s (lower)", b.total, q.total)
		if c.target {
			row("target image file, MiB (lower)", b.target, q.target)
		}
	}
}

// selectCases returns the cases whose names match one of the
// comma-separated names or prefixes in list, all of them for "".
func selectCases(list string) []jobCase {
	if list == "" {
		return cases
	}
	var out []jobCase
	for _, c := range cases {
		for _, p := range strings.Split(list, ",") {
			if p != "" && strings.HasPrefix(c.name, p) {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

func caseNames() string {
	var names []string
	for _, c := range cases {
		names = append(names, c.name)
	}
	return strings.Join(names, ", ")
}
