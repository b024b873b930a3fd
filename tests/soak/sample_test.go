package soak

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// meter adds up, over the time the load runs (the pauses for samples
// left out), the wall time, the daemon's CPU time, the test's own CPU
// time (the clients, qemu-io not included) and the commands answered.
type meter struct {
	pid      int
	n        *counts
	seconds  float64
	cpu      float64
	selfCPU  float64
	commands int64

	t0          time.Time
	cpu0, self0 float64
	ok0         int64
}

func newMeter(pid int, n *counts) *meter {
	m := &meter{pid: pid, n: n}
	m.start()
	return m
}

func (m *meter) start() {
	m.t0, m.cpu0, m.self0, m.ok0 = time.Now(), cpuSeconds(m.pid), cpuSeconds(os.Getpid()), m.n.ok.Load()
}

func (m *meter) stop() {
	m.seconds += time.Since(m.t0).Seconds()
	m.cpu += cpuSeconds(m.pid) - m.cpu0
	m.selfCPU += cpuSeconds(os.Getpid()) - m.self0
	m.commands += m.n.ok.Load() - m.ok0
}

// cpuSeconds is a process's user+system CPU time so far, every thread
// counted (/proc/PID/stat fields 14 and 15, in USER_HZ).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// sample is what a leak shows in. goroutines and heap come from blockd's
// metrics endpoint (-1 for qsd); the rest from /proc.
type sample struct {
	goroutines int
	heapMiB    float64 // go_memstats_heap_inuse_bytes
	fds        int
	threads    int
	rssMiB     float64
}

// takeSample samples the daemon once it has settled: a client that has
// just gone (qemu-io, the previous scrape's HTTP connection) is noticed
// by the daemon asynchronously, so it samples until three samples 50 ms
// apart agree (and, for blockd, no NBD connection is left).
func takeSample(t *testing.T, d *daemon) sample {
	var prev sample
	same := 0
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, nbdConns := readSample(t, d)
		if s.goroutines == prev.goroutines && s.fds == prev.fds && nbdConns == 0 {
			same++
		} else {
			same = 0
		}
		if same == 2 || time.Now().After(deadline) {
			return s
		}
		prev = s
		time.Sleep(50 * time.Millisecond)
	}
}

func readSample(t *testing.T, d *daemon) (s sample, nbdConns float64) {
	s = sample{goroutines: -1, heapMiB: -1}
	if entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.pid())); err == nil {
		s.fds = len(entries)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.pid()))
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		switch k {
		case "VmRSS":
			s.rssMiB = n / 1024
		case "Threads":
			s.threads = int(n)
		}
	}
	if d.metrics == "" {
		return s, 0
	}
	m, err := scrape(d.metrics)
	if err != nil {
		t.Errorf("scraping blockd's metrics: %v", err)
		return s, 0
	}
	s.goroutines = int(m["go_goroutines"])
	s.heapMiB = m["go_memstats_heap_inuse_bytes"] / (1 << 20)
	return s, m["blockd_nbd_connections"]
}

// scrape reads the unlabelled metrics of a Prometheus endpoint on a UNIX
// socket, on a connection of its own that the server then closes.
func scrape(sock string) (map[string]float64, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://blockd/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			m[name] = f
		}
	}
	return m, sc.Err()
}

// result is one daemon's run.
type result struct {
	meter
	clients                  int
	jobCycles, jobs, nbdRuns int
	first, last              sample
	guardHeld                time.Duration // the queries held back (guard)
}

func (r *result) rate() float64          { return float64(r.commands) / r.seconds }
func (r *result) cpuPerCommand() float64 { return r.cpu / float64(r.commands) }

func (r *result) report(t *testing.T, kind string) {
	t.Logf("%s: %d clients, %.0f s under load: %d commands answered (%.0f/s), daemon CPU %.1f s (%.0f%% of a core), %.1f µs CPU per command; test process CPU %.1f s",
		kind, r.clients, r.seconds, r.commands, r.rate(), r.cpu, 100*r.cpu/r.seconds, 1e6*r.cpuPerCommand(), r.selfCPU)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	t.Logf("%s: reply time p50 %.1f ms, p99 %.1f ms (every command of the run, held-back queries included)",
		kind, ms(r.n.lat.quantile(0.50)), ms(r.n.lat.quantile(0.99)))
	t.Logf("%s: %d job cycles (%d jobs), %d NBD writer runs (%d KiB each, flushed); query-named-block-nodes held back %.1f s for jobs",
		kind, r.jobCycles, r.jobs, r.nbdRuns, nbdSlotsPerRun*nbdSlot>>10, r.guardHeld.Seconds())
	for _, s := range []struct {
		when string
		s    sample
	}{{"at 20%", r.first}, {"at the end", r.last}} {
		t.Logf("%s %-10s: goroutines %d, fds %d, threads %d, RSS %.1f MiB, heap in use %.1f MiB",
			kind, s.when, s.s.goroutines, s.s.fds, s.s.threads, s.s.rssMiB, s.s.heapMiB)
	}
}

// Leak tolerances, from the sample at 20% of the run to the one at its
// end; both are taken with the load paused in the same state.
const (
	// Goroutines and fds: none may stay behind a command, a job or an NBD
	// connection; the slack covers one goroutine or fd that the runtime
	// or the metrics endpoint keeps for a moment longer.
	goroutineSlack = 2
	fdSlack        = 2
	// RSS: the Go heap settles over the first minutes (GC pacing, caches
	// filled once); a leak of even a few bytes per command grows far
	// beyond this over a run of 10 minutes.
	rssSlackMiB      = 16
	rssSlackFraction = 0.25
)

func (r *result) checkLeaks(t *testing.T) {
	f, l := r.first, r.last
	if l.goroutines > f.goroutines+goroutineSlack {
		t.Errorf("goroutines grew from %d to %d", f.goroutines, l.goroutines)
	}
	if l.fds > f.fds+fdSlack {
		t.Errorf("open fds grew from %d to %d", f.fds, l.fds)
	}
	if limit := f.rssMiB*(1+rssSlackFraction) + rssSlackMiB; l.rssMiB > limit {
		t.Errorf("RSS grew from %.1f MiB to %.1f MiB (limit %.1f MiB)", f.rssMiB, l.rssMiB, limit)
	}
}
