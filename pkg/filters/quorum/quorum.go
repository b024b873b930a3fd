package quorum

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsQuorum's members.
type Options struct {
	Blkverify        *bool           `json:"blkverify,omitempty"`
	Children         []block.NodeRef `json:"children"`
	VoteThreshold    int64           `json:"vote-threshold"`
	RewriteCorrupted *bool           `json:"rewrite-corrupted,omitempty"`
	ReadPattern      *ReadPattern    `json:"read-pattern,omitempty"`
}

// ReadPattern is QMP's QuorumReadPattern.
type ReadPattern string

const (
	// ReadQuorum reads every child and votes on the data.
	ReadQuorum ReadPattern = "quorum"
	// ReadFIFO reads the first child, and the next one if that fails.
	ReadFIFO ReadPattern = "fifo"
)

// EnumValues implements qmp.Enum.
func (ReadPattern) EnumValues() []string { return []string{"quorum", "fifo"} }

// Quorum is an open quorum node.
type Quorum struct {
	node *block.Node
	// children are the child edges, children.0 first; replaced (never
	// changed in place) by x-blockdev-change while the node is drained,
	// so a request uses the set it loaded at its start throughout.
	children atomic.Pointer[[]*block.Child]
	// next is the index in the name of the next child added: one more
	// than the highest index given so far, less the children removed
	// from the end (QEMU's rule). Guarded by the graph lock.
	next      int
	threshold int
	pattern   ReadPattern
	blkverify bool // only with ReadQuorum
	rewrite   bool // only with ReadQuorum
	log       logrus.FieldLogger
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	q := &Quorum{node: o.Node(), pattern: ReadQuorum, log: o.Logger()}
	// QEMU's checks, in QEMU's order, before any child is opened.
	n := len(opts.Children)
	if n < 1 {
		return nil, block.Errorf(block.ErrInvalid, "Number of provided children must be 1 or more")
	}
	if opts.VoteThreshold < 1 {
		return nil, block.Errorf(block.ErrInvalid, "Parameter 'vote-threshold' expects a value >= 1")
	}
	if opts.VoteThreshold > int64(n) {
		return nil, block.Errorf(block.ErrInvalid, "threshold may not exceed children count")
	}
	q.threshold = int(opts.VoteThreshold)
	if opts.ReadPattern != nil {
		switch *opts.ReadPattern {
		case ReadQuorum, ReadFIFO:
			q.pattern = *opts.ReadPattern
		default:
			return nil, block.Errorf(block.ErrInvalid, "Parameter 'read-pattern' does not accept value '%s'", *opts.ReadPattern)
		}
	}
	// compat(qsd-7.2): blkverify and rewrite-corrupted are ignored, not
	// refused, with read-pattern fifo.
	if q.pattern == ReadQuorum {
		q.blkverify = opts.Blkverify != nil && *opts.Blkverify
		if q.blkverify && (n != 2 || q.threshold != 2) {
			return nil, block.Errorf(block.ErrInvalid, "blkverify=on can only be set if there are exactly two files and vote-threshold is 2")
		}
		q.rewrite = opts.RewriteCorrupted != nil && *opts.RewriteCorrupted
		if q.rewrite && q.blkverify {
			return nil, block.Errorf(block.ErrInvalid, "rewrite-corrupted=on cannot be used with blkverify=on")
		}
	}
	var cs []*block.Child
	for i, ref := range opts.Children {
		c, err := o.Attach(ctx, childName(i), ref, block.RoleData)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	q.children.Store(&cs)
	q.next = n
	return q, nil
}

// Of returns the quorum behind node n, if it is one.
func Of(n *block.Node) (*Quorum, bool) {
	q, ok := n.Impl().(*Quorum)
	return q, ok
}

// Children are the child edges, children.0 first.
func (q *Quorum) Children() []*block.Child { return slices.Clone(q.kids()) }

// kids is the current set of children; the slice must not be changed.
func (q *Quorum) kids() []*block.Child { return *q.children.Load() }

func childName(i int) string { return fmt.Sprintf("children.%d", i) }

// Threshold is the vote threshold.
func (q *Quorum) Threshold() int { return q.threshold }

// ReadPattern is how reads are done.
func (q *Quorum) ReadPattern() ReadPattern { return q.pattern }

// ChildPerm implements block.ChildPermer: the parents' permissions pass
// through (with write when corrupted children are rewritten), but no
// other user may write or resize a child behind the quorum's back, which
// would make the children differ (QEMU's quorum permissions).
func (q *Quorum) ChildPerm(c *block.Child, perm, shared block.Perm) (block.Perm, block.Perm) {
	if q.rewrite {
		perm |= block.PermWrite
	}
	return perm, block.PermConsistentRead | block.PermWriteUnchanged
}

// Caps: every child's limits hold (the largest alignment, the smallest
// transfer), write-zeroes is native only if it is for all children;
// discards are not passed on (as in QEMU), nor is FUA.
func (q *Quorum) Caps() block.Caps {
	c := block.Caps{Zero: true, BlockStatus: true}
	for _, ch := range q.kids() {
		cc := ch.Node().Caps()
		c.Zero = c.Zero && cc.Zero
		l := cc.Limits
		c.Limits.RequestAlign = max(c.Limits.RequestAlign, l.RequestAlign)
		c.Limits.OptimalTransfer = max(c.Limits.OptimalTransfer, l.OptimalTransfer)
		if l.MaxTransfer > 0 && (c.Limits.MaxTransfer == 0 || l.MaxTransfer < c.Limits.MaxTransfer) {
			c.Limits.MaxTransfer = l.MaxTransfer
		}
	}
	return c
}

// Size is the children's size; they must all have the same.
func (q *Quorum) Size(ctx context.Context) (int64, error) {
	cs := q.kids()
	size := cs[0].Size()
	for _, c := range cs[1:] {
		if c.Size() != size {
			return 0, block.Errorf(block.ErrInvalid, "Could not refresh total sector count: %w", block.ErrnoError(syscall.EIO))
		}
	}
	return size, nil
}

func init() {
	block.DeclareEvent("QUORUM_REPORT_BAD", ReportBad{})
	block.DeclareEvent("QUORUM_FAILURE", Failure{})
}

// ReportBad is the data of QUORUM_REPORT_BAD.
type ReportBad struct {
	Type         string `json:"type"` // read, write, flush
	Error        string `json:"error,omitempty"`
	NodeName     string `json:"node-name"`
	SectorNum    int64  `json:"sector-num"`
	SectorsCount int64  `json:"sectors-count"`
}

// Failure is the data of QUORUM_FAILURE.
type Failure struct {
	Reference    string `json:"reference"`
	SectorNum    int64  `json:"sector-num"`
	SectorsCount int64  `json:"sectors-count"`
}

func sectors(off, n int64) (num, count int64) {
	num = off / 512
	return num, (off+n+511)/512 - num
}

func (q *Quorum) reportBad(typ string, c *block.Child, off, n int64, err error) {
	ev := ReportBad{Type: typ, NodeName: c.Node().Name()}
	if typ != "flush" {
		ev.SectorNum, ev.SectorsCount = sectors(off, n)
	}
	if err != nil {
		ev.Error = block.Strerror(block.ErrnoOf(err))
	}
	q.node.Graph().Emit("QUORUM_REPORT_BAD", ev)
}

func (q *Quorum) reportFailure(off, n int64) {
	num, count := sectors(off, n)
	q.node.Graph().Emit("QUORUM_FAILURE", Failure{Reference: q.node.Name(), SectorNum: num, SectorsCount: count})
}

// voteError is the errno most children failed with, as an error. Ties go
// to the errno seen last, as in QEMU.
func voteError(errs []error) error {
	var vals []syscall.Errno
	counts := map[syscall.Errno]int{}
	for _, err := range errs {
		if err == nil {
			continue
		}
		e := block.ErrnoOf(err)
		if counts[e] == 0 {
			vals = append(vals, e)
		}
		counts[e]++
	}
	best, n := syscall.EIO, 0
	for i := len(vals) - 1; i >= 0; i-- {
		if counts[vals[i]] > n {
			best, n = vals[i], counts[vals[i]]
		}
	}
	return block.ErrnoError(best)
}

// each runs fn for every child of cs in parallel and returns the errors.
func each(cs []*block.Child, fn func(i int, c *block.Child) error) []error {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i, c)
		}()
	}
	wg.Wait()
	return errs
}

func (q *Quorum) ReadAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if q.pattern == ReadFIFO {
		return q.readFIFO(ctx, p, off, fl)
	}
	return q.readQuorum(ctx, p, off, fl)
}

// readFIFO reads the children in order until one succeeds.
func (q *Quorum) readFIFO(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	var err error
	for _, c := range q.kids() {
		if err = c.ReadAt(ctx, p, off, fl); err == nil {
			return nil
		}
		q.reportBad("read", c, off, int64(len(p)), err)
	}
	return err
}

// version is one content that some children returned.
type version struct {
	data    []byte
	sum     [sha256.Size]byte
	members []int // children that returned it
}

// readQuorum reads every child and votes.
func (q *Quorum) readQuorum(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	n := int64(len(p))
	cs := q.kids()
	bufs := make([][]byte, len(cs))
	errs := each(cs, func(i int, c *block.Child) error {
		bufs[i] = make([]byte, len(p))
		return c.ReadAt(ctx, bufs[i], off, fl)
	})
	ok := 0
	first := -1
	for i, err := range errs {
		if err != nil {
			q.reportBad("read", cs[i], off, n, err)
			continue
		}
		ok++
		if first < 0 {
			first = i
		}
	}
	if ok < q.threshold {
		q.reportFailure(off, n)
		return voteError(errs)
	}
	// The usual case: every successful read agrees.
	agree := true
	for i := first + 1; i < len(bufs) && agree; i++ {
		if errs[i] != nil {
			continue
		}
		if q.blkverify {
			if j := mismatch(bufs[first], bufs[i]); j >= 0 {
				// compat(qsd-7.2): QEMU prints this and exits the whole
				// process; blockd fails the request instead.
				q.log.Errorf("quorum: offset=%d bytes=%d contents mismatch at offset %d", off, n, off+int64(j))
				return fmt.Errorf("quorum: offset=%d bytes=%d contents mismatch at offset %d: %w", off, n, off+int64(j), block.ErrnoError(syscall.EIO))
			}
			continue
		}
		agree = bytes.Equal(bufs[first], bufs[i])
	}
	if agree {
		copy(p, bufs[first])
		return nil
	}

	var versions []*version
	for i, b := range bufs {
		if errs[i] != nil {
			continue
		}
		sum := sha256.Sum256(b)
		var v *version
		for _, x := range versions {
			if x.sum == sum {
				v = x
				break
			}
		}
		if v == nil {
			v = &version{data: b, sum: sum}
			versions = append(versions, v)
		}
		v.members = append(v.members, i)
	}
	// The most represented version wins; ties go to the one seen last,
	// as in QEMU.
	var win *version
	for i := len(versions) - 1; i >= 0; i-- {
		if win == nil || len(versions[i].members) > len(win.members) {
			win = versions[i]
		}
	}
	if len(win.members) < q.threshold {
		q.reportFailure(off, n)
		return block.ErrnoError(syscall.EIO)
	}
	copy(p, win.data)
	var bad []int
	for i := len(versions) - 1; i >= 0; i-- {
		v := versions[i]
		if v == win {
			continue
		}
		for j := len(v.members) - 1; j >= 0; j-- {
			bad = append(bad, v.members[j])
		}
	}
	for _, i := range bad {
		q.reportBad("read", cs[i], off, n, nil)
	}
	if q.rewrite {
		// A repair attempt: errors are ignored, the read has its data.
		var wg sync.WaitGroup
		for _, i := range bad {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := cs[i].WriteAt(ctx, win.data, off, 0); err != nil {
					q.log.WithError(err).Warnf("quorum: rewriting %s", cs[i].Node().Name())
				}
			}()
		}
		wg.Wait()
	}
	return nil
}

// mismatch is the index of the first byte where a and b differ, or -1.
func mismatch(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// written finishes a request that went to every child of cs: failures
// are reported, and the request fails unless enough children succeeded.
func (q *Quorum) written(cs []*block.Child, errs []error, off, n int64) error {
	ok := 0
	for i, err := range errs {
		if err != nil {
			q.reportBad("write", cs[i], off, n, err)
			continue
		}
		ok++
	}
	if ok < q.threshold {
		q.reportFailure(off, n)
		return voteError(errs)
	}
	return nil
}

func (q *Quorum) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	cs := q.kids()
	return q.written(cs, each(cs, func(i int, c *block.Child) error {
		return c.WriteAt(ctx, p, off, fl)
	}), off, int64(len(p)))
}

func (q *Quorum) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	cs := q.kids()
	return q.written(cs, each(cs, func(i int, c *block.Child) error {
		return c.Zero(ctx, off, n, fl)
	}), off, n)
}

// Discard does nothing: QEMU's quorum does not pass discards on, and
// Caps says so, so the generic layer never calls it.
func (q *Quorum) Discard(ctx context.Context, off, n int64) error { return nil }

// Flush flushes every child; it fails only if fewer than the threshold
// succeed.
func (q *Quorum) Flush(ctx context.Context) error {
	cs := q.kids()
	errs := make([]error, len(cs))
	ok := 0
	for i, c := range cs {
		if errs[i] = c.Flush(ctx); errs[i] != nil {
			q.reportBad("flush", c, 0, 0, errs[i])
			continue
		}
		ok++
	}
	if ok >= q.threshold {
		return nil
	}
	return voteError(errs)
}

// BlockStatus reports zeroes only where every child reads as zeroes
// (looking down each child's chain), data elsewhere: children may hold
// the same data with different allocation. Zero extents are as short as
// the shortest child's, data extents as long as the longest's.
func (q *Quorum) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	zeroLen, dataLen := n, int64(0)
	for _, c := range q.kids() {
		st, err := block.StatusAbove(ctx, c.Node(), nil, off, n)
		if err != nil {
			q.reportBad("read", c, off, n, err)
			dataLen = n
			break
		}
		if st.Zero {
			zeroLen = min(zeroLen, st.Len)
		} else {
			dataLen = max(dataLen, st.Len)
		}
	}
	if dataLen > 0 {
		return block.Extent{Len: dataLen, Status: block.StatusData | block.StatusAllocated}, nil
	}
	return block.Extent{Len: zeroLen, Status: block.StatusZero | block.StatusAllocated}, nil
}

func (q *Quorum) Truncate(ctx context.Context, size int64, exact bool) error {
	return block.Errorf(block.ErrNotSupported, "Image format driver does not support resize")
}

func (q *Quorum) Close() error { return nil }

// CanReplace implements block.ReplaceChecker: a child may be replaced by a
// copy of the quorum's data only if nothing but the quorum uses it (its
// own data may differ from the quorum's: a corrupted child is what a
// mirror with 'replaces' repairs); a node further below only if a child
// vouches for it. Call under the graph lock.
func (q *Quorum) CanReplace(to *block.Node) bool {
	for _, c := range q.kids() {
		if c.Node() == to {
			ps := to.Parents()
			return len(ps) == 1 && ps[0] == c
		}
		if block.CanReplace(c.Node(), to) {
			return true
		}
	}
	return false
}

// RefuseReopen implements block.ReopenRefuser: QEMU's quorum has no
// reopen handler, so qsd refuses blockdev-reopen of a quorum node.
func (q *Quorum) RefuseReopen() {}
