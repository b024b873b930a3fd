package qcow2

import "github.com/blockd/blockd/pkg/block"

func init() {
	d := block.Register("qcow2", block.KindFormat, open)
	d.Probe = probe
	d.SupportsBacking = true
	block.RegisterCreate("qcow2", create)
}

// probe recognises the qcow2 magic and a version qemu would accept.
func probe(head []byte) int {
	if len(head) >= 8 && be32(head) == qcowMagic && be32(head[4:]) >= 2 {
		return 100
	}
	return 0
}

// SetBacking implements block.BackingSetter: blockdev-snapshot and
// blockdev-reopen give the image another COW child (or none). The graph
// calls it with the node drained, so no request reads q.backing meanwhile.
func (q *image) SetBacking(c *block.Child) { q.backing = c }
