package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/blockd/blockd/pkg/block"
)

var (
	nodeLabels = []string{"node", "op"}

	descOps = prometheus.NewDesc("blockd_node_operations_total",
		"Requests a node completed, by operation (read, write, flush, unmap), as query-blockstats counts them.", nodeLabels, nil)
	descBytes = prometheus.NewDesc("blockd_node_bytes_total",
		"Bytes a node read, wrote or unmapped.", nodeLabels, nil)
	descFailed = prometheus.NewDesc("blockd_node_failed_operations_total",
		"Requests that failed on a node, by operation.", nodeLabels, nil)
	descLatency = prometheus.NewDesc("blockd_node_request_duration_seconds",
		"Time of the requests that reached a node through a root (an export or a job), by operation.", nodeLabels, nil)
	descSize = prometheus.NewDesc("blockd_node_size_bytes",
		"A node's virtual size.", []string{"node", "driver"}, nil)

	jobLabels        = []string{"job", "type"}
	descJobProgress  = prometheus.NewDesc("blockd_job_progress_bytes", "A job's current progress (query-jobs' current-progress); rate() of it is the job's throughput.", jobLabels, nil)
	descJobTotal     = prometheus.NewDesc("blockd_job_total_bytes", "A job's total work as it now estimates it (query-jobs' total-progress).", jobLabels, nil)
	descJobStatus    = prometheus.NewDesc("blockd_job_status", "1 for a job's current status.", append(jobLabels, "status"), nil)
	descNBDConns     = prometheus.NewDesc("blockd_nbd_connections", "Connections the NBD server is serving.", nil, nil)
	exportLabels     = []string{"export", "node"}
	descNBDClients   = prometheus.NewDesc("blockd_nbd_export_clients", "Clients in transmission phase on an NBD export.", exportLabels, nil)
	descNBDInFlight  = prometheus.NewDesc("blockd_nbd_export_requests_in_flight", "Requests an NBD export is serving.", exportLabels, nil)
	collectorMetrics = []*prometheus.Desc{descOps, descBytes, descFailed, descLatency, descSize,
		descJobProgress, descJobTotal, descJobStatus, descNBDConns, descNBDClients, descNBDInFlight}
)

// latencyBounds are the histogram's bucket bounds in seconds.
var latencyBounds = func() []float64 {
	b := make([]float64, block.LatencyBuckets-1)
	for i := range b {
		b[i] = block.LatencyBound(i).Seconds()
	}
	return b
}()

// collector reads Sources at scrape time.
type collector struct{ src Sources }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range collectorMetrics {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.collectNodes(ch)
	c.collectJobs(ch)
	c.collectNBD(ch)
}

// nodeStat is one node's figures, copied under the graph lock.
type nodeStat struct {
	name, driver string
	size         int64
	st           *block.Stats
}

func (c *collector) collectNodes(ch chan<- prometheus.Metric) {
	if c.src.Graph == nil {
		return
	}
	g := c.src.Graph
	g.Lock()
	var nodes []nodeStat
	for _, n := range g.Nodes() {
		nodes = append(nodes, nodeStat{n.Name(), n.Driver().Name, n.Size(), &n.Stats})
	}
	g.Unlock()
	counter := func(d *prometheus.Desc, v int64, node, op string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), node, op)
	}
	for _, n := range nodes {
		st := n.st
		for _, op := range []struct {
			name            string
			ops, bytes, bad int64
			timeNs          int64
			lat             *block.Latency
		}{
			{"read", st.RdOps.Load(), st.RdBytes.Load(), st.FailedRd.Load(), st.RdTimeNs.Load(), &st.RdLatency},
			{"write", st.WrOps.Load(), st.WrBytes.Load(), st.FailedWr.Load(), st.WrTimeNs.Load(), &st.WrLatency},
			{"flush", st.FlushOps.Load(), -1, st.FailedFlush.Load(), st.FlushTimeNs.Load(), &st.FlushLatency},
			{"unmap", st.UnmapOps.Load(), st.UnmapBytes.Load(), st.FailedUnmap.Load(), st.UnmapTimeNs.Load(), &st.UnmapLatency},
		} {
			counter(descOps, op.ops, n.name, op.name)
			if op.bytes >= 0 {
				counter(descBytes, op.bytes, n.name, op.name)
			}
			counter(descFailed, op.bad, n.name, op.name)
			ch <- latencyHistogram(op.lat, op.timeNs, n.name, op.name)
		}
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(n.size), n.name, n.driver)
	}
}

// latencyHistogram turns a node's latency buckets into a Prometheus
// histogram (cumulative buckets; the sum is the node's total time).
func latencyHistogram(l *block.Latency, sumNs int64, node, op string) prometheus.Metric {
	counts := l.Counts()
	buckets := make(map[float64]uint64, len(latencyBounds))
	var cum uint64
	for i, bound := range latencyBounds {
		cum += uint64(counts[i])
		buckets[bound] = cum
	}
	cum += uint64(counts[len(counts)-1])
	return prometheus.MustNewConstHistogram(descLatency, cum, float64(sumNs)/1e9, buckets, node, op)
}

func (c *collector) collectJobs(ch chan<- prometheus.Metric) {
	if c.src.Jobs == nil {
		return
	}
	for _, j := range c.src.Jobs.Jobs() {
		in := j.Info()
		ch <- prometheus.MustNewConstMetric(descJobProgress, prometheus.GaugeValue, float64(in.CurrentProgress), in.ID, in.Type)
		ch <- prometheus.MustNewConstMetric(descJobTotal, prometheus.GaugeValue, float64(in.TotalProgress), in.ID, in.Type)
		ch <- prometheus.MustNewConstMetric(descJobStatus, prometheus.GaugeValue, 1, in.ID, in.Type, in.Status)
	}
}

func (c *collector) collectNBD(ch chan<- prometheus.Metric) {
	if c.src.NBD == nil {
		return
	}
	conns, exports := c.src.NBD()
	ch <- prometheus.MustNewConstMetric(descNBDConns, prometheus.GaugeValue, float64(conns))
	for _, e := range exports {
		ch <- prometheus.MustNewConstMetric(descNBDClients, prometheus.GaugeValue, float64(e.Clients), e.ID, e.Node)
		ch <- prometheus.MustNewConstMetric(descNBDInFlight, prometheus.GaugeValue, float64(e.InFlight), e.ID, e.Node)
	}
}
