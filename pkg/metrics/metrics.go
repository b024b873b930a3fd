// Package metrics serves blockd's state as Prometheus metrics: per-node
// I/O counters and latency histograms (what query-blockstats counts), job
// progress, NBD connections and requests in flight, and QMP commands by
// name and error class.
//
// Everything but the command counts is read at scrape time from counters
// the daemon keeps anyway (block.Stats, jobs.Job.Info, the NBD export
// gates): the collector adds no work to the I/O path, and a node, job or
// export appears in a scrape exactly while it exists.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/blockdev"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/qmp"
)

// Sources are what a scrape reads.
type Sources struct {
	Graph *block.Graph
	Jobs  *jobs.Runner
	// NBD returns the NBD server's connections and exports' load; nil
	// leaves the NBD metrics out.
	NBD func() (conns int, exports []blockdev.ExportLoad)
}

// Registry is blockd's metrics: a Prometheus registry holding the
// collector of Sources, the QMP command counter and the Go runtime's and
// process's own metrics (goroutines, memory, open fds: what a leak shows
// in).
type Registry struct {
	*prometheus.Registry
	commands *prometheus.CounterVec
}

// New returns a registry reading src.
func New(src Sources) *Registry {
	r := &Registry{
		Registry: prometheus.NewRegistry(),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blockd_qmp_commands_total",
			Help: `QMP commands answered, by command ("" for a command that does not exist) and result ("ok" or the QMP error class).`,
		}, []string{"command", "result"}),
	}
	r.MustRegister(r.commands, &collector{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// OnCommand counts one answered command; it fits qmp.ServerOptions.
func (r *Registry) OnCommand(name string, class qmp.Class) {
	result := string(class)
	if result == "" {
		result = "ok"
	}
	r.commands.WithLabelValues(name, result).Inc()
}
