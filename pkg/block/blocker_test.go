package block_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// TestChainLinks: the links from top down to base through filters and
// COW backings, the one that points at base included.
func TestChainLinks(t *testing.T) {
	g, top, flt, mid, base := buildChain(t)
	g.Lock()
	defer g.Unlock()
	baseFile := block.StorageChild(base).Node()
	tests := []struct {
		top, base *block.Node
		want, err string
	}{
		{top: top, base: base, want: "backing->flt file->mid backing->base"},
		{top: top, base: mid, want: "backing->flt file->mid"},
		{top: top, base: flt, want: "backing->flt"},
		{top: top, base: top, want: ""},
		{top: top, base: nil, want: "backing->flt file->mid backing->base"},
		{top: flt, base: base, want: "file->mid backing->base"},
		{top: mid, base: top, err: "'top' is not in the backing chain of 'mid'"},
		// A format's file is its storage, not the next in its chain.
		{top: base, base: baseFile, err: "'" + baseFile.Name() + "' is not in the backing chain of 'base'"},
	}
	for _, tt := range tests {
		cs, err := block.ChainLinks(tt.top, tt.base)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err || !errors.Is(err, block.ErrInvalid) {
				t.Errorf("ChainLinks(%s, %s): err = %v, want %q", name(tt.top), name(tt.base), err, tt.err)
			}
			continue
		}
		var got []string
		for _, c := range cs {
			got = append(got, childName(c))
		}
		if err != nil || strings.Join(got, " ") != tt.want {
			t.Errorf("ChainLinks(%s, %s) = %q, %v; want %q", name(tt.top), name(tt.base), strings.Join(got, " "), err, tt.want)
		}
	}
}

// TestBlockedNewestFirst: of the blockers on a node's users, the newest
// that refuses the operation names the reason; one that allows it is
// passed over. The order of the parents is what "newest" means, so an
// aborted change must keep it.
func TestBlockedNewestFirst(t *testing.T) {
	f := newTxnFixture(t)
	const job = "block device is in use by block job: commit"
	// base's users: r0, then mid's backing link. r0 becomes a job that
	// lets only resize through.
	change(t, f.g, func(tx *block.Txn) error {
		tx.SetBlocker(f.r0.Child(), job, block.OpResize)
		return nil
	})
	blocked := func() map[block.Op]string {
		f.g.Lock()
		defer f.g.Unlock()
		m := map[block.Op]string{}
		for _, op := range []block.Op{block.OpStream, block.OpMirrorTarget, block.OpResize, block.OpCommitTarget} {
			if err := f.base.Blocked(op); err != nil {
				m[op] = strings.TrimPrefix(err.Error(), "Node 'base' is busy: ")
			}
		}
		return m
	}
	want := map[block.Op]string{
		block.OpStream:       job,                                   // the backing link allows it
		block.OpMirrorTarget: "node is used as backing hd of 'mid'", // newest refuses
		block.OpResize:       "node is used as backing hd of 'mid'",
		block.OpCommitTarget: job,
	}
	check := func(when string) {
		t.Helper()
		got := blocked()
		for op, w := range want {
			if got[op] != w {
				t.Errorf("%s: op %#x blocked by %q, want %q", when, op, got[op], w)
			}
		}
	}
	check("before")
	tx := f.g.Begin()
	tx.Detach(f.r0)
	tx.Abort()
	check("after an aborted detach")
}
