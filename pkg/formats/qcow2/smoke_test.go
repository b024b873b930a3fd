package qcow2

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
)

func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", p, "4M")
	qemuIO(t, p, "write -P 0x11 0 64k", "write -P 0x22 100k 10k")
	g := newGraph()
	_, r := openImage(t, g, "q", p, nil)
	got := readAll(t, r)
	ctx := context.Background()
	buf := bytes.Repeat([]byte{0x33}, 5000)
	if err := r.WriteAt(ctx, buf, 1<<20+100, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteAt(ctx, buf, 10, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got = readAll(t, r)
	closeImage(t, g, r, "q")
	qemuCheck(t, p, false)
	want := rawContents(t, p)
	if d := firstDiff(got, want); d != "" {
		t.Fatal(d)
	}
}
