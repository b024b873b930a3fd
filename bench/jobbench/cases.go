package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/blockd/blockd/bench/internal/benchutil"
)

// A jobCase is one job run on a fresh copy of the images.
type jobCase struct {
	name, about string
	images      []string // images of the original directory the job works on
	target      bool     // a new qcow2 of the same size is added as node "target"
	// targetBacking, if set, is an image of the original directory that
	// the new target names as its backing file (copied, not a node).
	targetBacking string
	command       string
	args          map[string]any // the command's arguments besides job-id
	until         string         // the event timed; after BLOCK_JOB_READY the job is completed
	copied        func(orig string) int64
	checks        []imageCheck // verified once the daemon has exited
}

// An imageCheck is what one image must be after the job: clean by
// qemu-img check, with backing file backing ("" for none), and with the
// data of the original chain of equals, where that is not "".
type imageCheck struct{ image, backing, equals string }

var chain = []string{"base", "mid", "top"}

// chainBacking names the backing node of each image of the chain.
var chainBacking = map[string]string{"mid": "base", "top": "mid"}

var cases = []jobCase{
	{name: "stream-base", about: "block-stream top with base-node=base: copies mid",
		images: chain, command: "block-stream", args: map[string]any{"device": "top", "base-node": "base"},
		until: "BLOCK_JOB_COMPLETED", copied: allocatedIn("top", 1, 1),
		checks: []imageCheck{{"top", "base.qcow2", "top"}}},
	{name: "stream-all", about: "block-stream top with no base: copies mid and base",
		images: chain, command: "block-stream", args: map[string]any{"device": "top"},
		until: "BLOCK_JOB_COMPLETED", copied: allocatedIn("top", 1, 2),
		checks: []imageCheck{{"top", "", "top"}}},
	{name: "commit-mid", about: "intermediate block-commit of mid into base",
		images: chain, command: "block-commit", args: map[string]any{"device": "top", "top-node": "mid", "base-node": "base"},
		until: "BLOCK_JOB_COMPLETED", copied: allocatedIn("top", 1, 1),
		checks: []imageCheck{{"top", "base.qcow2", "top"}, {"base", "", ""}}},
	{name: "commit-active", about: "active block-commit of top and mid into base, to READY, then completed",
		images: chain, command: "block-commit", args: map[string]any{"device": "top", "base-node": "base"},
		until: "BLOCK_JOB_READY", copied: allocatedIn("top", 0, 1),
		checks: []imageCheck{{"base", "", "top"}}},
	{name: "mirror-full", about: "blockdev-mirror sync=full of the chain into a new qcow2, to READY, then completed",
		images: chain, target: true, command: "blockdev-mirror", args: map[string]any{"device": "top", "target": "target", "sync": "full"},
		until: "BLOCK_JOB_READY", copied: allocatedIn("top", 0, 2),
		checks: []imageCheck{{"target", "", "top"}}},
	{name: "backup-text", about: "blockdev-backup sync=full of a half-allocated image of compressible data into a new qcow2",
		images: []string{"text"}, target: true, command: "blockdev-backup", args: map[string]any{"device": "text", "target": "target", "sync": "full"},
		until: "BLOCK_JOB_COMPLETED", copied: allocatedIn("text", 0, 0),
		checks: []imageCheck{{"target", "", "text"}}},
	{name: "backup-compress", about: "the same backup with compress=true (zlib)",
		images: []string{"text"}, target: true, command: "blockdev-backup", args: map[string]any{"device": "text", "target": "target", "sync": "full", "compress": true},
		until: "BLOCK_JOB_COMPLETED", copied: allocatedIn("text", 0, 0),
		checks: []imageCheck{{"target", "", "text"}}},
	{name: "mirror-sparse", about: "blockdev-mirror sync=full of a 10%-allocated image into a new qcow2, to READY, then completed",
		images: []string{"sparse"}, target: true, command: "blockdev-mirror", args: map[string]any{"device": "sparse", "target": "target", "sync": "full"},
		until: "BLOCK_JOB_READY", copied: allocatedIn("sparse", 0, 0),
		checks: []imageCheck{{"target", "", "sparse"}}},
	{name: "backup-full", about: "blockdev-backup sync=full of the chain into a new qcow2",
		images: chain, target: true, command: "blockdev-backup", args: map[string]any{"device": "top", "target": "target", "sync": "full"},
		until: "BLOCK_JOB_COMPLETED", copied: allocatedIn("top", 0, 2),
		checks: []imageCheck{{"target", "", "top"}}},
	{name: "backup-incremental", about: "blockdev-backup sync=incremental of a 10%-changed image into an overlay of its last full backup",
		images: []string{"incsrc"}, target: true, targetBacking: "incbase", command: "blockdev-backup",
		args:  map[string]any{"device": "incsrc", "target": "target", "sync": "incremental", "bitmap": "b0"},
		until: "BLOCK_JOB_COMPLETED", copied: func(string) int64 { return incrementalBytes },
		checks: []imageCheck{{"target", "incbase.qcow2", "incsrc"}}},
}

// allocatedIn is what the chain of img (in the original directory)
// allocates at depths lo..hi.
func allocatedIn(img string, lo, hi int) func(orig string) int64 {
	return func(orig string) int64 { return allocated(filepath.Join(orig, img+".qcow2"), lo, hi) }
}

// measured is one run's figures: the job's seconds to its milestone, the
// daemon's CPU seconds meanwhile and peak RSS in MiB, the seconds from
// block-job-complete to BLOCK_JOB_COMPLETED (0 if the job ends by itself),
// the seconds quit took and the size in MiB of the target image file (0
// without a target).
type measured struct{ secs, cpu, rss, finish, quit, target float64 }

// runOnce copies the case's images, runs its job in one daemon and
// verifies the result.
func runOnce(name, dir, orig string, c jobCase, size, warm int64) measured {
	run := filepath.Join(dir, "run")
	os.RemoveAll(run)
	benchutil.Check(os.Mkdir(run, 0o755))
	defer os.RemoveAll(run)
	var imgs []string
	for _, l := range c.images {
		img := filepath.Join(run, l+".qcow2")
		benchutil.MustRun("cp", "--reflink=auto", filepath.Join(orig, l+".qcow2"), img)
		imgs = append(imgs, img)
	}
	nodes := c.images
	if c.target {
		img := filepath.Join(run, "target.qcow2")
		create := []string{"create", "-q", "-f", "qcow2"}
		if b := c.targetBacking; b != "" {
			bimg := filepath.Join(run, b+".qcow2")
			benchutil.MustRun("cp", "--reflink=auto", filepath.Join(orig, b+".qcow2"), bimg)
			imgs = append(imgs, bimg)
			create = append(create, "-b", b+".qcow2", "-F", "qcow2")
		}
		if *targetOpt != "" {
			create = append(create, "-o", *targetOpt)
		}
		benchutil.MustRun("qemu-img", append(create, img, fmt.Sprint(size))...)
		imgs = append(imgs, img)
		nodes = append(nodes[:len(nodes):len(nodes)], "target")
	}
	// The copies must not be written back while a daemon runs, and both
	// daemons read them from the page cache.
	benchutil.MustRun("sync", imgs...)
	benchutil.MustRun("cat", imgs...)

	d := startDaemon(name, dir)
	defer d.Kill() // if a step below fails before quit
	for _, n := range nodes {
		d.Cmd1("blockdev-add", nodeOptions(run, n))
	}
	args := map[string]any{"job-id": "j0"}
	maps.Copy(args, c.args)

	var m measured
	faultIn(warm)
	pid := d.Cmd.Process.Pid
	cpu0 := benchutil.CPUSeconds(pid)
	stopPerf := startPerf(pid, name, c.name)
	t0 := time.Now()
	d.Cmd1(c.command, args)
	waitJob(d, c.until)
	m.secs = time.Since(t0).Seconds()
	stopPerf()
	m.cpu = benchutil.CPUSeconds(pid) - cpu0
	m.rss = benchutil.PeakRSS(pid)
	if c.until == "BLOCK_JOB_READY" {
		t0 = time.Now()
		d.Cmd1("block-job-complete", map[string]any{"device": "j0"})
		waitJob(d, "BLOCK_JOB_COMPLETED")
		m.finish = time.Since(t0).Seconds()
	}
	t0 = time.Now()
	d.Quit()
	m.quit = time.Since(t0).Seconds()
	if c.target {
		st, err := os.Stat(filepath.Join(run, "target.qcow2"))
		benchutil.Check(err)
		m.target = mib(st.Size())
	}
	verify(name, orig, run, c)
	return m
}

// waitJob waits for the job's event called until and panics if the job
// ends with an error first.
func waitJob(d *daemon, until string) {
	ev, data := d.WaitEvent(until, "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
	if e, ok := data["error"]; ok || ev == "BLOCK_JOB_CANCELLED" || ev != until {
		panic(fmt.Sprintf("%s: job ended with %s before %s: %v", d.Name, ev, until, e))
	}
}

// nodeOptions are blockdev-add's options for image n of the run
// directory.
func nodeOptions(run, n string) map[string]any {
	o := map[string]any{"driver": "qcow2", "node-name": n,
		"file": map[string]any{"driver": "file", "filename": filepath.Join(run, n+".qcow2")}}
	if *noFlush {
		o["cache"] = map[string]any{"no-flush": true}
	}
	if b, ok := chainBacking[n]; ok {
		o["backing"] = b
	}
	return o
}

// verify fails the benchmark unless every image the case checks is
// clean, has the expected backing file and the expected data.
func verify(name, orig, run string, c jobCase) {
	for _, ic := range c.checks {
		img := filepath.Join(run, ic.image+".qcow2")
		fail := func(format string, a ...any) {
			panic(fmt.Sprintf("%s, case %s, %s: %s", name, c.name, ic.image, fmt.Sprintf(format, a...)))
		}
		if out, err := exec.Command("qemu-img", "check", "-q", img).CombinedOutput(); err != nil {
			fail("qemu-img check: %v\n%s", err, out)
		}
		out, err := exec.Command("qemu-img", "info", "--output=json", img).Output()
		benchutil.Check(err)
		var info struct {
			Backing string `json:"backing-filename"`
		}
		benchutil.Check(json.Unmarshal(out, &info))
		if info.Backing != ic.backing && filepath.Base(info.Backing) != ic.backing {
			fail("backing file is %q, want %q", info.Backing, ic.backing)
		}
		if ic.equals == "" {
			continue
		}
		if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
			filepath.Join(orig, ic.equals+".qcow2"), img).CombinedOutput(); err != nil {
			fail("differs from the original %s: %v\n%s", ic.equals, err, out)
		}
	}
}

// startPerf records the daemon's samples while the job runs, when -perf
// asks, and returns what stops it. Recording costs the daemon some time:
// use it to see where time goes, not for the figures.
func startPerf(pid int, name, cs string) (stop func()) {
	if *perfDir == "" {
		return func() {}
	}
	benchutil.Check(os.MkdirAll(*perfDir, 0o755))
	var out string
	for i := 1; ; i++ {
		out = filepath.Join(*perfDir, fmt.Sprintf("%s-%s-%d.data", name, cs, i))
		if _, err := os.Stat(out); err != nil {
			break
		}
	}
	rec := exec.Command("perf", "record", "-q", "-g", "-p", fmt.Sprint(pid), "-o", out)
	benchutil.Check(rec.Start())
	time.Sleep(200 * time.Millisecond) // perf attaches
	return func() {
		rec.Process.Signal(os.Interrupt)
		rec.Wait()
	}
}
