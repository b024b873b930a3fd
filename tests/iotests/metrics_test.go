package iotests

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape reads the metrics endpoint on a UNIX socket and returns each
// sample's value by its name and labels as the exposition format writes
// them (`name{label="v",...}`).
func scrape(t *testing.T, sock string) map[string]float64 {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Get("http://blockd/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape: bad sample %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetrics scrapes blockd's Prometheus endpoint while a rate-limited
// stream runs and an NBD client reads, and checks that what should move
// moves: the job's progress, the top image's writes, the request latency
// histogram, the NBD connection and the QMP command counts.
func TestMetrics(t *testing.T) {
	skipOnQSD(t, "qsd has no metrics endpoint (blockd's --metrics)")
	msock := shortSock(t, "metrics")
	nsock := shortSock(t, "nbd")
	d := start(t, "--metrics", "unix:"+msock)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": nsock}}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "name": "top"})
	// 1 MiB/s: 16 s for mid's 16 MiB, so the job still runs when scraped.
	mustCall(t, d, "block-stream", map[string]any{"job-id": "s1", "device": "top", "base-node": "base", "speed": 1 << 20})
	d.MustFail("no-such-command", nil, "CommandNotFound", "The command no-such-command has not been found")

	first := scrape(t, msock)
	waitProgress(t, d, "s1", 9<<20) // 8 MiB skipped, 1 MiB copied
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read 0 1M", nbdURI(nsock, "top"))
	second := scrape(t, msock)

	moved := []string{
		`blockd_job_progress_bytes{job="s1",type="stream"}`,
		`blockd_node_operations_total{node="top",op="write"}`,
		`blockd_node_bytes_total{node="top",op="read"}`,
		`blockd_qmp_commands_total{command="query-jobs",result="ok"}`,
	}
	for _, k := range moved {
		if second[k] <= first[k] {
			t.Errorf("%s did not move: %v then %v", k, first[k], second[k])
		}
	}
	// The export's reads reach the node above top, the stream's filter.
	reads := func(m map[string]float64) (n float64) {
		for k, v := range m {
			if strings.HasPrefix(k, "blockd_node_request_duration_seconds_count{") && strings.Contains(k, `op="read"`) {
				n += v
			}
		}
		return n
	}
	if reads(second) <= reads(first) {
		t.Errorf("read latency histograms did not move: %v then %v requests", reads(first), reads(second))
	}
	for k, want := range map[string]float64{
		`blockd_job_status{job="s1",status="running",type="stream"}`:     1,
		`blockd_qmp_commands_total{command="",result="CommandNotFound"}`: 1,
		`blockd_qmp_commands_total{command="block-stream",result="ok"}`:  1,
		`blockd_node_size_bytes{driver="qcow2",node="top"}`:              64 << 20,
	} {
		if second[k] != want {
			t.Errorf("%s = %v, want %v", k, second[k], want)
		}
	}
	if second[`go_goroutines`] <= 0 || second[`process_open_fds`] <= 0 {
		t.Errorf("runtime metrics missing: goroutines %v, fds %v", second[`go_goroutines`], second[`process_open_fds`])
	}
	d.Cmd("block-job-set-speed", map[string]any{"device": "s1", "speed": 0})
	waitStatus(t, d, "s1", "null")
	if _, ok := scrape(t, msock)[`blockd_job_progress_bytes{job="s1",type="stream"}`]; ok {
		t.Error("a job that is gone still has metrics")
	}
}
