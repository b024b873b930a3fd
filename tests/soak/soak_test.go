// Package soak runs blockd and qemu-storage-daemon 7.2, one after the
// other, under the same long mixed load and compares them (issue 15):
//
//   - SOAK_CLIENTS (32) QMP clients, each on a connection of its own, issue a
//     mix of cheap commands as fast as the replies come (client_test.go);
//   - an NBD writer writes and flushes patterns into an exported qcow2
//     node, one qemu-io run after another (nbd_test.go);
//   - a job driver repeats blockdev-create, block-stream, block-commit
//     (intermediate and active) and blockdev-mirror on a small qcow2
//     chain of its own (jobs_test.go).
//
// blockd serves every client on one monitor socket; qsd 7.2 serves one
// client per monitor, so it gets a monitor per client. Each daemon runs
// for SOAKTIME (20s; `make soak` runs 10m). The test fails when a command
// goes unanswered or fails, when blockd's goroutines, open fds or RSS grow
// between the sample at 20% of the run and the one at its end, when an
// image is not clean or the NBD writer's flushed data does not read back,
// and, with SOAK_RATIO=1, when blockd does not answer 1.3x qsd's commands
// per second at half its CPU per command or less.
//
// qsd 7.2 crashes when a client's query-named-block-nodes meets a job, so
// the query is held back while a job exists, on both daemons (see guard
// in workload_test.go); TestSoakUnguarded runs blockd without that.
// SOAK_JOBS=0 leaves the job driver out (no guard needed then),
// SOAK_DAEMONS=blockd or qsd runs one daemon, QSD and BLOCKD name the
// binaries.
package soak

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// config is what the environment asks of the run.
type config struct {
	duration time.Duration // SOAKTIME: how long each daemon runs
	clients  int           // SOAK_CLIENTS
	daemons  []string      // SOAK_DAEMONS: blockd, qsd or both
	ratio    bool          // SOAK_RATIO=1: enforce the rate and CPU targets
	guarded  bool          // keep queries apart from jobs (see guard)
	jobs     bool          // SOAK_JOBS=0: no job driver (the chain stays as made)
	perfDir  string        // SOAK_PERF=DIR: perf record each daemon into DIR/<daemon>.perf.data
}

func loadConfig(t *testing.T) config {
	c := config{duration: 20 * time.Second, clients: 32, daemons: []string{"blockd", "qsd"}, guarded: true, jobs: true}
	if v := os.Getenv("SOAKTIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 5*time.Second {
			t.Fatalf("SOAKTIME=%q: want a duration of 5s or more", v)
		}
		c.duration = d
	}
	if v := os.Getenv("SOAK_CLIENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SOAK_CLIENTS=%q: want a positive number", v)
		}
		c.clients = n
	}
	if v := os.Getenv("SOAK_DAEMONS"); v != "" {
		c.daemons = strings.Split(v, ",")
	}
	c.ratio = os.Getenv("SOAK_RATIO") == "1"
	c.jobs = os.Getenv("SOAK_JOBS") != "0"
	c.perfDir = os.Getenv("SOAK_PERF")
	return c
}

// Targets of issue 15: blockd answers at least rateTarget times qsd's
// commands per second, at cpuTarget times qsd's CPU per command or less.
const (
	rateTarget = 1.3
	cpuTarget  = 0.5
)

func TestSoak(t *testing.T) {
	cfg := loadConfig(t)
	for _, tool := range []string{"qemu-img", "qemu-io", "qemu-storage-daemon"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run 'make deps'", tool)
		}
	}
	blockd := buildBlockd(t)
	results := map[string]*result{}
	for _, kind := range cfg.daemons {
		bin := blockd
		if kind == "qsd" {
			bin = cmp.Or(os.Getenv("QSD"), "qemu-storage-daemon")
		} else if kind != "blockd" {
			t.Fatalf("SOAK_DAEMONS: unknown daemon %q", kind)
		}
		t.Run(kind, func(t *testing.T) {
			results[kind] = soak(t, cfg, kind, bin)
		})
	}
	b, q := results["blockd"], results["qsd"]
	if b == nil || q == nil || t.Failed() {
		return
	}
	rate, cpu := b.rate()/q.rate(), b.cpuPerCommand()/q.cpuPerCommand()
	t.Logf("blockd/qsd: command rate %.2fx (target >= %.1fx), CPU per command %.2fx (target <= %.1fx)",
		rate, rateTarget, cpu, cpuTarget)
	if cfg.ratio && (rate < rateTarget || cpu > cpuTarget) {
		t.Errorf("blockd misses the targets: rate %.2fx of qsd's, CPU per command %.2fx of qsd's", rate, cpu)
	}
}

// TestSoakUnguarded runs blockd alone under the load without the guard
// that qsd needs: the clients' queries meet create jobs and job
// completions. It runs for SOAK_UNGUARDED (20s; 0 skips it).
func TestSoakUnguarded(t *testing.T) {
	cfg := loadConfig(t)
	cfg.guarded = false
	cfg.duration = 20 * time.Second
	if v := os.Getenv("SOAK_UNGUARDED"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SOAK_UNGUARDED=%q: %v", v, err)
		}
		if d == 0 {
			t.Skip("SOAK_UNGUARDED=0")
		}
		cfg.duration = d
	}
	soak(t, cfg, "blockd", buildBlockd(t))
}

// buildBlockd builds blockd without the race detector: the run measures
// its speed. BLOCKD names a binary to use instead.
func buildBlockd(t *testing.T) string {
	if bin := os.Getenv("BLOCKD"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "blockd")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/blockd").CombinedOutput()
	if err != nil {
		t.Fatalf("building blockd: %v\n%s", err, out)
	}
	return bin
}

// soak runs one daemon under the whole load and checks it.
func soak(t *testing.T, cfg config, kind, bin string) *result {
	d := startDaemon(t, kind, bin, cfg.clients)
	w := newWorkload(t, cfg, d)
	stopPerf := record(t, cfg.perfDir, kind, d.pid())
	res := w.run(cfg.duration)
	stopPerf()
	w.stop()
	d.quit(t)
	res.report(t, kind)
	w.verify(t)
	if kind == "blockd" {
		res.checkLeaks(t)
	}
	return res
}

// fail reports the first error of a run; later ones are usually its
// consequences.
func fail(t *testing.T, errs []error) {
	t.Helper()
	if len(errs) == 0 {
		return
	}
	msg := errs[0].Error()
	if len(errs) > 1 {
		msg += fmt.Sprintf(" (and %d more errors)", len(errs)-1)
	}
	t.Error(msg)
}

// record runs perf record on the daemon while the load runs, when dir is
// set, to show where its CPU time goes (perf report -i the file); the
// function it returns stops it.
func record(t *testing.T, dir, kind string, pid int) func() {
	if dir == "" {
		return func() {}
	}
	out := filepath.Join(dir, kind+".perf.data")
	cmd := exec.Command("perf", "record", "-g", "-q", "-o", out, "-p", strconv.Itoa(pid))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("perf record: %v", err)
	}
	return func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait() // perf exits on the interrupt, with the file written
		t.Logf("%s's profile: perf report -i %s", kind, out)
	}
}
