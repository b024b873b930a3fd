package block

func init() { DeclareEvent("BLOCK_WRITE_THRESHOLD", WriteThresholdEvent{}) }

// WriteThresholdEvent is BLOCK_WRITE_THRESHOLD's data.
type WriteThresholdEvent struct {
	NodeName       string `json:"node-name"`
	AmountExceeded uint64 `json:"amount-exceeded"`
	WriteThreshold uint64 `json:"write-threshold"`
}

// SetWriteThreshold arms BLOCK_WRITE_THRESHOLD on n: the first write,
// write-zeroes or discard that reaches past offset t fires the event once
// and disarms it (0), so that a management tool watching a thin volume
// fill up is told once, not flooded. 0 disarms it.
func (n *Node) SetWriteThreshold(t uint64) { n.writeThreshold.Store(t) }

// WriteThreshold is the armed threshold, 0 if none (query's
// write_threshold).
func (n *Node) WriteThreshold() uint64 { return n.writeThreshold.Load() }

// checkWriteThreshold fires the event for a request on [off, off+length)
// before it runs, as QEMU does: the event is a warning, not a record of
// a completed write.
func (n *Node) checkWriteThreshold(off, length int64) {
	t := n.writeThreshold.Load()
	end := uint64(off + length)
	if t == 0 || end <= t || !n.writeThreshold.CompareAndSwap(t, 0) {
		return
	}
	n.g.Emit("BLOCK_WRITE_THRESHOLD", WriteThresholdEvent{NodeName: n.name, AmountExceeded: end - t, WriteThreshold: t})
}
