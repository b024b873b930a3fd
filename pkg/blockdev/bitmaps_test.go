package blockdev

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// TestBitmapStates: what the commands refuse for a busy, a read-only and
// an inconsistent bitmap, with qsd's messages. No QMP command makes such
// a bitmap yet (a job or an export using it, an image that stores it),
// so the test sets the states itself.
func TestBitmapStates(t *testing.T) {
	const (
		busy  = "Bitmap 'b' is currently in use by another operation and cannot be used"
		ro    = "Bitmap 'b' is readonly and cannot be modified"
		incon = "Bitmap 'b' is inconsistent and cannot be used"
	)
	cmd := func(name string) [2]string { return [2]string{name, `{"node": "n", "name": "b"}`} }
	clear, enable, disable, remove := cmd("block-dirty-bitmap-clear"), cmd("block-dirty-bitmap-enable"),
		cmd("block-dirty-bitmap-disable"), cmd("block-dirty-bitmap-remove")
	mergeInto := [2]string{"block-dirty-bitmap-merge", `{"node": "n", "target": "b", "bitmaps": ["o"]}`}
	mergeFrom := [2]string{"block-dirty-bitmap-merge", `{"node": "n", "target": "o", "bitmaps": ["b"]}`}
	sha := cmd("x-debug-block-dirty-bitmap-sha256")
	inTxn := [2]string{"transaction", `{"actions": [{"type": "block-dirty-bitmap-enable", "data": {"node": "n", "name": "b"}}]}`}

	for _, tc := range []struct {
		name  string
		set   func(b *block.DirtyBitmap)
		fails map[[2]string]string // command → message; the others succeed
	}{
		{"busy", func(b *block.DirtyBitmap) { b.SetBusy(true) }, map[[2]string]string{
			clear: busy, enable: busy, disable: busy, remove: busy, mergeInto: busy, mergeFrom: busy, inTxn: busy,
		}},
		{"read-only", func(b *block.DirtyBitmap) { b.SetReadOnly(true) }, map[[2]string]string{
			clear: ro, remove: ro, mergeInto: ro,
		}},
		{"inconsistent", func(b *block.DirtyBitmap) { b.SetInconsistent(true) }, map[[2]string]string{
			clear: incon, enable: incon, disable: incon, mergeInto: incon, mergeFrom: incon, inTxn: incon,
		}},
	} {
		for _, c := range [][2]string{clear, enable, disable, mergeInto, mergeFrom, sha, inTxn, remove} {
			s := New(nil)
			ctx := context.Background()
			for _, step := range [][2]string{
				{"blockdev-add", `{"driver": "null-co", "node-name": "n"}`},
				{"block-dirty-bitmap-add", `{"node": "n", "name": "b"}`},
				{"block-dirty-bitmap-add", `{"node": "n", "name": "o"}`},
			} {
				if err := s.Execute(ctx, step[0], json.RawMessage(step[1])); err != nil {
					t.Fatal(err)
				}
			}
			tc.set(s.G.Lookup("n").FindDirtyBitmap("b"))
			err := s.Execute(ctx, c[0], json.RawMessage(c[1]))
			want, fails := tc.fails[c]
			if fails != (err != nil) || fails && err.Error() != want {
				t.Errorf("%s: %s %s: %v, want %q", tc.name, c[0], c[1], err, want)
			}
			s.Shutdown(ctx)
		}
	}
}

// TestBitmapInfo: query-named-block-nodes lists a node's bitmaps newest
// first, a job's anonymous bitmap without a name and "inconsistent" only
// when true; a node without bitmaps has no dirty-bitmaps member.
func TestBitmapInfo(t *testing.T) {
	s := New(nil)
	ctx := context.Background()
	defer s.Shutdown(ctx)
	for _, step := range [][2]string{
		{"blockdev-add", `{"driver": "null-co", "node-name": "n", "size": 1000}`},
		{"blockdev-add", `{"driver": "null-co", "node-name": "empty"}`},
		{"block-dirty-bitmap-add", `{"node": "n", "name": "a", "granularity": 512, "disabled": true}`},
	} {
		if err := s.Execute(ctx, step[0], json.RawMessage(step[1])); err != nil {
			t.Fatal(err)
		}
	}
	n := s.G.Lookup("n")
	anon, err := n.AddDirtyBitmap("", 4096)
	if err != nil {
		t.Fatal(err)
	}
	anon.Set(0, 1)
	n.FindDirtyBitmap("a").SetInconsistent(true)
	got, err := s.queryNamedBlockNodes(ctx, &namedNodesArgs{})
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]json.RawMessage
	b, _ := json.Marshal(got)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	for _, node := range out {
		bms := string(node["dirty-bitmaps"])
		want := ""
		if string(node["node-name"]) == `"n"` {
			want = `[{"count":4096,"granularity":4096,"recording":true,"busy":false,"persistent":false},` +
				`{"name":"a","count":0,"granularity":512,"recording":false,"busy":false,"persistent":false,"inconsistent":true}]`
		}
		if bms != want {
			t.Errorf("%s: dirty-bitmaps %s, want %s", node["node-name"], bms, want)
		}
	}
}
