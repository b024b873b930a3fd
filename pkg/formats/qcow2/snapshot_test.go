package qcow2

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
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
