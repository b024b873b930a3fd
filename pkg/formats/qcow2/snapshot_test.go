package qcow2

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// TestSnapshotInterop takes, uses and deletes internal snapshots on every
// kind of image qemu makes: blockd takes a snapshot, writes, deletes one
// qemu took, writes, takes another and writes again. qemu-img check must
// find the image clean, qemu-img must list the snapshots and read each as
// it was, apply blockd's, and blockd must delete what qemu applied.
func TestSnapshotInterop(t *testing.T) {
	for _, tc := range interopCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testSnapshotInterop(t, tc)
		})
	}
}

func testSnapshotInterop(t *testing.T, tc interopCase) {
	ctx := context.Background()
	p := makeInteropImage(t, tc)
	m := &model{data: rawContents(t, p), cluster: tc.cs, discardZeroes: !strings.Contains(tc.create, "compat=0.10") || tc.backing == ""}
	var s2 []byte
	if tc.snapshot {
		s2 = snapshotContents(t, p, "s2")
	}
	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	sn := n.Impl().(block.InternalSnapshotter)
	_, err := sn.CreateInternalSnapshot(ctx, block.InternalSnapshot{Name: "b1", DateSec: 1700000000, DateNsec: 5000, VMClockNsec: 42})
	if strings.Contains(tc.create, "refcount_bits=1") {
		// One bit cannot count a shared cluster: refused, nothing written.
		if !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("snapshot with refcount_bits=1: %v, want EINVAL", err)
		}
		closeImage(t, g, r, "q")
		qemuCheck(t, p, false)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	b1 := slices.Clone(m.data)
	rng := rand.New(rand.NewPCG(uint64(tc.cs), 99))
	randomOps(t, r, m, rng, 40, 3*tc.cs)
	if tc.snapshot {
		if err := sn.DeleteInternalSnapshot(ctx, "1", "s1"); err != nil {
			t.Fatal(err)
		}
	}
	randomOps(t, r, m, rng, 20, 3*tc.cs)
	if _, err := sn.CreateInternalSnapshot(ctx, block.InternalSnapshot{Name: "b2"}); err != nil {
		t.Fatal(err)
	}
	b2 := slices.Clone(m.data)
	randomOps(t, r, m, rng, 40, 3*tc.cs)
	if d := firstDiff(readAll(t, r), m.data); d != "" {
		t.Fatalf("blockd reads after snapshots: %s", d)
	}
	closeImage(t, g, r, "q")
	qemuCheck(t, p, false)

	list := qemuImg(t, "snapshot", "-l", p)
	for _, name := range []string{"b1", "b2"} {
		if !strings.Contains(list, name) {
			t.Errorf("qemu-img snapshot -l lacks %s:\n%s", name, list)
		}
	}
	if tc.snapshot && strings.Contains(list, " s1 ") {
		t.Errorf("s1 still listed:\n%s", list)
	}
	for name, want := range map[string][]byte{"b1": b1, "b2": b2, "s2": s2} {
		if want == nil {
			continue
		}
		if d := firstDiff(snapshotContents(t, p, name), want); d != "" {
			t.Errorf("snapshot %s: %s", name, d)
		}
	}
	if d := firstDiff(rawContents(t, p), m.data); d != "" {
		t.Fatalf("qemu reads the active image: %s", d)
	}
	qemuImg(t, "snapshot", "-a", "b1", p)
	qemuCheck(t, p, false)
	if d := firstDiff(rawContents(t, p), b1); d != "" {
		t.Fatalf("after qemu-img snapshot -a b1: %s", d)
	}

	// blockd deletes every snapshot of the image qemu changed.
	n, r = openImage(t, g, "q", p, nil)
	sn = n.Impl().(block.InternalSnapshotter)
	all, err := sn.InternalSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if err := sn.DeleteInternalSnapshot(ctx, s.ID, s.Name); err != nil {
			t.Fatalf("delete %s: %v", s.Name, err)
		}
	}
	m.data = b1
	randomOps(t, r, m, rng, 20, 3*tc.cs)
	closeImage(t, g, r, "q")
	qemuCheck(t, p, false)
	if d := firstDiff(rawContents(t, p), m.data); d != "" {
		t.Fatalf("after deleting every snapshot: %s", d)
	}
	if list := qemuImg(t, "snapshot", "-l", p); strings.TrimSpace(list) != "" {
		t.Errorf("snapshots left:\n%s", list)
	}
}

// crashMem is the fuzz tests' memory file with a budget of writes: once
// it is spent every change fails, so its bytes are what a process killed
// before that write would have left.
type crashMemOptions struct {
	Key    string `json:"key"`
	Budget int64  `json:"budget"`
}

type crashMem struct {
	*fuzzMem
	budget atomic.Int64
}

var crashMems sync.Map // key -> *crashMem

func openCrashMem(ctx context.Context, o *block.Opener, opts *crashMemOptions) (block.Impl, error) {
	v, ok := fuzzImages.Load(opts.Key)
	if !ok {
		return nil, fmt.Errorf("no image %q", opts.Key)
	}
	m := &crashMem{fuzzMem: &fuzzMem{data: slices.Clone(v.([]byte)), limit: fuzzLimit}}
	m.budget.Store(opts.Budget)
	crashMems.Store(opts.Key, m)
	return m, nil
}

func (m *crashMem) spend() error {
	if m.budget.Add(-1) < 0 {
		return fmt.Errorf("crashed: %w", syscall.EIO)
	}
	return nil
}

func (m *crashMem) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	if err := m.spend(); err != nil {
		return err
	}
	return m.fuzzMem.WriteAt(ctx, p, off, f)
}

func (m *crashMem) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	if err := m.spend(); err != nil {
		return err
	}
	return m.fuzzMem.Zero(ctx, off, n, f)
}

func (m *crashMem) Discard(ctx context.Context, off, n int64) error {
	if err := m.spend(); err != nil {
		return err
	}
	return m.fuzzMem.Discard(ctx, off, n)
}

func (m *crashMem) Truncate(ctx context.Context, size int64, exact bool) error {
	if err := m.spend(); err != nil {
		return err
	}
	return m.fuzzMem.Truncate(ctx, size, exact)
}

func init() {
	block.Register("qcow2-crash-mem", block.KindProtocol, openCrashMem)
}

// TestSnapshotCrashPoints stops the file's writes at every point of a
// snapshot create and delete in turn: each image left must be clean but
// for leaks in qemu-img check, list the old or the new snapshots, and
// read the same, as must a snapshot it lists.
func TestSnapshotCrashPoints(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", p, "4M")
	qemuIO(t, p, "write -P 1 0 1M", "write -c -P 2 1M 64k")
	qemuImg(t, "snapshot", "-c", "s1", p)
	qemuIO(t, p, "write -P 3 512k 1M")
	want := rawContents(t, p)
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	ops := []struct {
		name        string
		run         func(sn block.InternalSnapshotter) error
		before, now string
	}{
		{"create", func(sn block.InternalSnapshotter) error {
			_, err := sn.CreateInternalSnapshot(context.Background(), block.InternalSnapshot{Name: "n1"})
			return err
		}, "s1", "s1 n1"},
		{"delete", func(sn block.InternalSnapshotter) error {
			return sn.DeleteInternalSnapshot(context.Background(), "1", "s1")
		}, "s1", ""},
	}
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			for budget := int64(0); ; budget++ {
				if budget > 500 {
					t.Fatal("no success after 500 writes")
				}
				left, err := crashAt(t, img, budget, op.run)
				out := filepath.Join(t.TempDir(), "left.qcow2")
				if werr := os.WriteFile(out, left, 0o644); werr != nil {
					t.Fatal(werr)
				}
				r := qemuCheck(t, out, err != nil)
				var names []string
				for _, line := range strings.Split(qemuImg(t, "snapshot", "-l", out), "\n") {
					if f := strings.Fields(line); len(f) > 2 && f[0] != "ID" {
						names = append(names, f[1])
					}
				}
				got := strings.Join(names, " ")
				if got != op.before && got != op.now || err == nil && got != op.now {
					t.Fatalf("write %d (op error %v): snapshots %q, want %q or %q", budget, err, got, op.before, op.now)
				}
				if d := firstDiff(rawContents(t, out), want); d != "" {
					t.Fatalf("write %d: active image: %s", budget, d)
				}
				if strings.Contains(got, "n1") {
					if d := firstDiff(snapshotContents(t, out, "n1"), want); d != "" {
						t.Fatalf("write %d: snapshot n1: %s", budget, d)
					}
				}
				if err == nil {
					if r.Leaks != 0 {
						t.Fatalf("leaks after a completed %s: %+v", op.name, r)
					}
					t.Logf("%s: %d crash points", op.name, budget)
					break
				}
			}
		})
	}
}

// crashAt runs op on img with a budget of writes and returns the bytes
// left and op's error.
func crashAt(t *testing.T, img []byte, budget int64, op func(block.InternalSnapshotter) error) ([]byte, error) {
	key := strconv.FormatInt(fuzzKeys.Add(1), 10)
	fuzzImages.Store(key, img)
	defer fuzzImages.Delete(key)
	defer crashMems.Delete(key)
	g := newGraph()
	if _, err := blocktest.TryOpen(g, fmt.Sprintf(`{"driver":"qcow2-crash-mem","node-name":"m","key":%q,"budget":%d}`, key, budget)); err != nil {
		t.Fatal(err)
	}
	n, err := blocktest.TryOpen(g, `{"driver":"qcow2","node-name":"q","file":"m","backing":null,"cache-clean-interval":0}`)
	if err != nil {
		t.Fatal(err)
	}
	opErr := op(n.Impl().(block.InternalSnapshotter))
	tx := g.Begin()
	_ = tx.Delete("q")
	_ = tx.Delete("m")
	_ = tx.Commit()
	v, _ := crashMems.Load(key)
	m := v.(*crashMem)
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.data), opErr
}

// TestSnapshotLimits: a snapshot that would make the table hold more than
// 65536 snapshots or 64 MiB is refused with EFBIG before anything is
// written.
func TestSnapshotLimits(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "a.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", p, "1M")
	qemuIO(t, p, "write -P 1 0 64k")
	qemuImg(t, "snapshot", "-c", "s1", p)
	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	q := n.Impl().(*image)
	// The largest entry there can be: 64 KiB - 1 of ID and of name.
	big := snapshot{l1Offset: q.snapshots[0].l1Offset, l1Size: q.snapshots[0].l1Size,
		raw: encodeSnapshot(q.snapshots[0].l1Offset, q.snapshots[0].l1Size,
			block.InternalSnapshot{ID: strings.Repeat("9", 65535), Name: strings.Repeat("n", 65535)})}
	for _, tc := range []struct {
		name string
		list []snapshot
	}{
		{"65536 snapshots", slices.Repeat(q.snapshots[:1], maxSnapshots)},
		{"table over 64 MiB", slices.Repeat([]snapshot{big}, maxSnapTableLen/len(big.raw)+1)},
	} {
		saved := q.snapshots
		q.snapshots = tc.list
		_, err := q.CreateInternalSnapshot(ctx, block.InternalSnapshot{Name: "x"})
		q.snapshots = saved
		if !errors.Is(err, syscall.EFBIG) {
			t.Errorf("%s: %v, want EFBIG", tc.name, err)
		}
	}
	closeImage(t, g, r, "q")
	qemuCheck(t, p, false)
	if list := qemuImg(t, "snapshot", "-l", p); !strings.Contains(list, "s1") || strings.Count(list, "\n") != 3 {
		t.Errorf("snapshots after the refusals:\n%s", list)
	}
}
