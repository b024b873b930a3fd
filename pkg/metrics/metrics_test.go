package metrics_test

import (
	"context"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/blockdev"
	"github.com/blockd/blockd/pkg/metrics"
	"github.com/blockd/blockd/pkg/qmp"
)

// find returns the metric of family name whose labels include want.
func find(t *testing.T, r *metrics.Registry, name string, want map[string]string) *dto.Metric {
	t.Helper()
	fams, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := want[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m
		}
	}
	t.Fatalf("no metric %s%v", name, want)
	return nil
}

func TestScrape(t *testing.T) {
	g := blocktest.NewGraph()
	n := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"disk","size":1048576}`)
	r := metrics.New(metrics.Sources{Graph: g, NBD: func() (int, []blockdev.ExportLoad) {
		return 2, []blockdev.ExportLoad{{ID: "e0", Node: "disk", Clients: 2, InFlight: 5}}
	}})
	root := blocktest.NewRoot(t, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
	buf := make([]byte, 4096)
	for range 3 {
		if err := root.ReadAt(context.Background(), buf, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := root.WriteAt(context.Background(), buf, 8192, 0); err != nil {
		t.Fatal(err)
	}
	r.OnCommand("query-version", "")
	r.OnCommand("query-version", "")
	r.OnCommand("blockdev-del", qmp.GenericError)

	tests := []struct {
		name   string
		labels map[string]string
		value  func(m *dto.Metric) float64
		want   float64
	}{
		{"blockd_node_operations_total", map[string]string{"node": "disk", "op": "read"}, counter, 3},
		{"blockd_node_bytes_total", map[string]string{"node": "disk", "op": "read"}, counter, 3 * 4096},
		{"blockd_node_operations_total", map[string]string{"node": "disk", "op": "write"}, counter, 1},
		{"blockd_node_request_duration_seconds", map[string]string{"node": "disk", "op": "read"},
			func(m *dto.Metric) float64 { return float64(m.GetHistogram().GetSampleCount()) }, 3},
		{"blockd_node_size_bytes", map[string]string{"node": "disk"}, gauge, 1 << 20},
		{"blockd_nbd_connections", nil, gauge, 2},
		{"blockd_nbd_export_requests_in_flight", map[string]string{"export": "e0"}, gauge, 5},
		{"blockd_qmp_commands_total", map[string]string{"command": "query-version", "result": "ok"}, counter, 2},
		{"blockd_qmp_commands_total", map[string]string{"command": "blockdev-del", "result": "GenericError"}, counter, 1},
	}
	for _, tc := range tests {
		if got := tc.value(find(t, r, tc.name, tc.labels)); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

func counter(m *dto.Metric) float64 { return m.GetCounter().GetValue() }
func gauge(m *dto.Metric) float64   { return m.GetGauge().GetValue() }

func TestListen(t *testing.T) {
	for _, bad := range []string{"", "unix:", "tcp", "http:127.0.0.1:1", "/path"} {
		if l, err := metrics.Listen(bad); err == nil {
			l.Close()
			t.Errorf("Listen(%q) succeeded", bad)
		}
	}
	l, err := metrics.Listen("unix:" + t.TempDir() + "/m.sock")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}
