package blockdev

import (
	"context"
	"time"

	"github.com/blockd/blockd/pkg/block"
)

// BlockDeviceStats is QMP's BlockDeviceStats.
type BlockDeviceStats struct {
	RdBytes                int64  `json:"rd_bytes"`
	WrBytes                int64  `json:"wr_bytes"`
	UnmapBytes             int64  `json:"unmap_bytes"`
	RdOperations           int64  `json:"rd_operations"`
	WrOperations           int64  `json:"wr_operations"`
	FlushOperations        int64  `json:"flush_operations"`
	UnmapOperations        int64  `json:"unmap_operations"`
	RdTotalTimeNs          int64  `json:"rd_total_time_ns"`
	WrTotalTimeNs          int64  `json:"wr_total_time_ns"`
	FlushTotalTimeNs       int64  `json:"flush_total_time_ns"`
	UnmapTotalTimeNs       int64  `json:"unmap_total_time_ns"`
	WrHighestOffset        int64  `json:"wr_highest_offset"`
	RdMerged               int64  `json:"rd_merged"`
	WrMerged               int64  `json:"wr_merged"`
	UnmapMerged            int64  `json:"unmap_merged"`
	FailedRdOperations     int64  `json:"failed_rd_operations"`
	FailedWrOperations     int64  `json:"failed_wr_operations"`
	FailedFlushOperations  int64  `json:"failed_flush_operations"`
	FailedUnmapOperations  int64  `json:"failed_unmap_operations"`
	InvalidRdOperations    int64  `json:"invalid_rd_operations"`
	InvalidWrOperations    int64  `json:"invalid_wr_operations"`
	InvalidFlushOperations int64  `json:"invalid_flush_operations"`
	InvalidUnmapOperations int64  `json:"invalid_unmap_operations"`
	IdleTimeNs             *int64 `json:"idle_time_ns,omitempty"`
	AccountInvalid         bool   `json:"account_invalid"`
	AccountFailed          bool   `json:"account_failed"`
	TimedStats             []any  `json:"timed_stats"`
}

// BlockStats is QMP's BlockStats.
type BlockStats struct {
	Device         string           `json:"device,omitempty"`
	Qdev           *string          `json:"qdev,omitempty"` // a guest device's id: exports have none
	NodeName       string           `json:"node-name,omitempty"`
	Stats          BlockDeviceStats `json:"stats"`
	DriverSpecific map[string]any   `json:"driver-specific,omitempty"`
	Parent         *BlockStats      `json:"parent,omitempty"`
	Backing        *BlockStats      `json:"backing,omitempty"`
}

type blockstatsArgs struct {
	QueryNodes *bool `json:"query-nodes,omitempty"`
}

func (s *Server) queryBlockstats(ctx context.Context, a *blockstatsArgs) ([]BlockStats, error) {
	out := []BlockStats{}
	if a.QueryNodes == nil || !*a.QueryNodes {
		// Devices: as query-block, every export's backend under the
		// export's id. compat(qsd-7.2): qsd has none to report ([]).
		s.mu.Lock()
		defer s.mu.Unlock()
		s.G.Lock()
		defer s.G.Unlock()
		for _, e := range s.exports.exports {
			out = append(out, *exportStats(e))
		}
		return out, nil
	}
	s.G.Lock()
	defer s.G.Unlock()
	// compat(qsd-7.2): oldest node first here (unlike query-named-block-nodes).
	nodes := s.G.Nodes()
	for i := len(nodes) - 1; i >= 0; i-- {
		out = append(out, *nodeStats(nodes[i], false))
	}
	return out, nil
}

// exportStats is an export's entry: the requests the export sent (its
// root's counters, not every user's of the node), and below them the
// chain of the node it serves, implicit filters skipped.
func exportStats(e *export) *BlockStats {
	b := nodeStats(e.root.Node(), true)
	b.Device = e.id
	rs := &e.root.Stats
	st := &b.Stats
	st.RdBytes, st.WrBytes, st.UnmapBytes = rs.RdBytes.Load(), rs.WrBytes.Load(), rs.UnmapBytes.Load()
	st.RdOperations, st.WrOperations = rs.RdOps.Load(), rs.WrOps.Load()
	st.FlushOperations, st.UnmapOperations = rs.FlushOps.Load(), rs.UnmapOps.Load()
	st.RdTotalTimeNs, st.WrTotalTimeNs = rs.RdTimeNs.Load(), rs.WrTimeNs.Load()
	st.FlushTotalTimeNs, st.UnmapTotalTimeNs = rs.FlushTimeNs.Load(), rs.UnmapTimeNs.Load()
	st.FailedRdOperations, st.FailedWrOperations = rs.FailedRd.Load(), rs.FailedWr.Load()
	st.FailedFlushOperations, st.FailedUnmapOperations = rs.FailedFlush.Load(), rs.FailedUnmap.Load()
	st.InvalidRdOperations, st.InvalidWrOperations = rs.InvalidRd.Load(), rs.InvalidWr.Load()
	st.InvalidUnmapOperations = rs.InvalidUnmap.Load()
	if last := rs.LastAccess.Load(); last > 0 {
		idle := max(time.Now().UnixNano()-last, 0)
		st.IdleTimeNs = &idle
	}
	return b
}

// nodeStats reports n's counters; parent holds its storage child's, so a
// filter in a chain does not break it. For a node (device false) backing
// is its COW child's; under a device it is the next node of the chain,
// filter or COW, and implicit filters are skipped, as qsd reports a
// backend's chain.
func nodeStats(n *block.Node, device bool) *BlockStats {
	if device {
		n = block.SkipImplicitFilters(n)
	}
	st := &n.Stats
	b := &BlockStats{
		NodeName: n.Name(),
		Stats: BlockDeviceStats{
			RdBytes:                st.RdBytes.Load(),
			WrBytes:                st.WrBytes.Load(),
			UnmapBytes:             st.UnmapBytes.Load(),
			RdOperations:           st.RdOps.Load(),
			WrOperations:           st.WrOps.Load(),
			FlushOperations:        st.FlushOps.Load(),
			UnmapOperations:        st.UnmapOps.Load(),
			RdTotalTimeNs:          st.RdTimeNs.Load(),
			WrTotalTimeNs:          st.WrTimeNs.Load(),
			FlushTotalTimeNs:       st.FlushTimeNs.Load(),
			UnmapTotalTimeNs:       st.UnmapTimeNs.Load(),
			WrHighestOffset:        st.WrHighestOffset.Load(),
			FailedRdOperations:     st.FailedRd.Load(),
			FailedWrOperations:     st.FailedWr.Load(),
			FailedFlushOperations:  st.FailedFlush.Load(),
			FailedUnmapOperations:  st.FailedUnmap.Load(),
			InvalidRdOperations:    st.InvalidRd.Load(),
			InvalidWrOperations:    st.InvalidWr.Load(),
			InvalidUnmapOperations: st.InvalidUnmap.Load(),
			TimedStats:             []any{},
		},
	}
	if ds, ok := n.Impl().(block.DriverStatser); ok {
		b.DriverSpecific = ds.DriverStats(st)
	}
	if c := block.StorageChild(n); c != nil {
		b.Parent = nodeStats(c.Node(), device)
	}
	backing := block.COWChild
	if device {
		backing = block.FilteredOrCOWChild
	}
	if c := backing(n); c != nil {
		b.Backing = nodeStats(c.Node(), device)
	}
	return b
}
