package qcow2

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// infoBitmap is one entry of qemu-img info's format-specific bitmaps.
type infoBitmap struct {
	Name        string   `json:"name"`
	Granularity int64    `json:"granularity"`
	Flags       []string `json:"flags"`
}

// qemuBitmaps lists an image's bitmaps as qemu-img info sees them.
func qemuBitmaps(t testing.TB, path string) []infoBitmap {
	t.Helper()
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []infoBitmap `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(qemuImg(t, "info", "-U", "--output=json", path)), &info); err != nil {
		t.Fatal(err)
	}
	return info.FormatSpecific.Data.Bitmaps
}

// dirtyRanges lists b's dirty extents as [off, len) pairs.
func dirtyRanges(b *block.DirtyBitmap) [][2]int64 {
	var out [][2]int64
	for off := int64(0); ; {
		d, n := b.NextDirty(off, 0)
		if n == 0 {
			return out
		}
		out = append(out, [2]int64{d, n})
		off = d + n
	}
}

func newBitmapImage(t *testing.T, size string, opts ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "b.qcow2")
	qemuImg(t, append(append([]string{"create", "-q", "-f", "qcow2"}, opts...), p, size)...)
	return p
}

// TestBitmapsFromQemu: bitmaps qemu-img made and qemu-io recorded into
// load with the same bits, enabled as the auto flag says.
func TestBitmapsFromQemu(t *testing.T) {
	p := newBitmapImage(t, "4M")
	qemuImg(t, "bitmap", "--add", "-g", "4k", p, "rec")
	qemuImg(t, "bitmap", "--add", p, "off")
	qemuImg(t, "bitmap", "--disable", p, "off")
	qemuIO(t, p, "write 0 4k", "write 1000k 70k", "write 4092k 4k")

	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	rec, off := n.FindDirtyBitmap("rec"), n.FindDirtyBitmap("off")
	if rec == nil || off == nil {
		t.Fatalf("bitmaps not loaded: %v", n.DirtyBitmaps())
	}
	want := [][2]int64{{0, 4 << 10}, {1000 << 10, 72 << 10}, {4092 << 10, 4 << 10}}
	if got := dirtyRanges(rec); !slices.Equal(got, want) || rec.Count() != 80<<10 || rec.Granularity() != 4096 {
		t.Errorf("rec: %v count %d granularity %d, want %v", got, rec.Count(), rec.Granularity(), want)
	}
	if !rec.Persistent() || !rec.Recording() || rec.Inconsistent() {
		t.Errorf("rec: persistent %v recording %v inconsistent %v", rec.Persistent(), rec.Recording(), rec.Inconsistent())
	}
	if off.Count() != 0 || off.Recording() || !off.Persistent() || off.Granularity() != 65536 {
		t.Errorf("off: count %d recording %v persistent %v", off.Count(), off.Recording(), off.Persistent())
	}
	// Open read-write: the image says the bitmaps are in use.
	for _, b := range qemuBitmaps(t, p) {
		if !slices.Contains(b.Flags, "in-use") {
			t.Errorf("while open: %+v not in use", b)
		}
	}
	closeImage(t, g, r, "q")
	got := qemuBitmaps(t, p)
	wantInfo := []infoBitmap{{"rec", 4096, []string{"auto"}}, {"off", 65536, []string{}}}
	if len(got) != 2 || got[0].Name != "rec" || !slices.Equal(got[0].Flags, wantInfo[0].Flags) || got[1].Name != "off" || len(got[1].Flags) != 0 {
		t.Errorf("after close: %+v, want %+v", got, wantInfo)
	}
	qemuCheck(t, p, false)
}

// TestBitmapsToQemu: blockd's persistent bitmaps are stored at close and
// qemu-img reads, checks and edits them; non-persistent ones are not
// stored; what qemu-img wrote back loads with the same bits.
func TestBitmapsToQemu(t *testing.T) {
	p := newBitmapImage(t, "8M", "-o", "cluster_size=4k")
	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	add := func(name string, gran int64, persistent bool) *block.DirtyBitmap {
		b, err := n.AddDirtyBitmap(name, gran)
		if err != nil {
			t.Fatal(err)
		}
		b.SetPersistent(persistent)
		return b
	}
	b0 := add("b0", 65536, true)
	b1 := add("b1", 512, true)
	add("tmp", 65536, false)
	ctx := context.Background()
	for _, w := range [][2]int64{{0, 4096}, {3 << 20, 300 << 10}, {8<<20 - 512, 512}} {
		if err := r.WriteAt(ctx, make([]byte, w[1]), w[0], 0); err != nil {
			t.Fatal(err)
		}
	}
	b1.SetRecording(false)
	if err := r.WriteAt(ctx, make([]byte, 4096), 6<<20, 0); err != nil {
		t.Fatal(err)
	}
	want0, want1 := dirtyRanges(b0), dirtyRanges(b1)
	closeImage(t, g, r, "q")

	got := qemuBitmaps(t, p)
	if len(got) != 2 || got[0].Name != "b0" || got[0].Granularity != 65536 || !slices.Equal(got[0].Flags, []string{"auto"}) ||
		got[1].Name != "b1" || got[1].Granularity != 512 || len(got[1].Flags) != 0 {
		t.Fatalf("qemu-img info: %+v", got)
	}
	qemuCheck(t, p, false)

	// qemu-img reads blockd's bits and writes them into a new bitmap.
	qemuImg(t, "bitmap", "--add", "-g", "512", p, "copy")
	qemuImg(t, "bitmap", "--merge", "b1", p, "copy")
	qemuImg(t, "bitmap", "--enable", p, "b1")
	qemuImg(t, "bitmap", "--clear", p, "b0")
	qemuCheck(t, p, false)

	g = newGraph()
	n, r = openImage(t, g, "q", p, nil)
	if c := n.FindDirtyBitmap("copy"); c == nil || !slices.Equal(dirtyRanges(c), want1) {
		t.Errorf("qemu-img's copy of b1: %v, want %v", c, want1)
	}
	if b := n.FindDirtyBitmap("b1"); b == nil || !b.Recording() || !slices.Equal(dirtyRanges(b), want1) {
		t.Errorf("b1 after --enable: %v", b)
	}
	if b := n.FindDirtyBitmap("b0"); b == nil || b.Count() != 0 || len(want0) != 4 {
		t.Errorf("b0 after --clear: %v (before: %v)", b, want0)
	}
	if n.FindDirtyBitmap("tmp") != nil {
		t.Error("a non-persistent bitmap was stored")
	}
	// Removed from the node: removed from the image at close.
	n.RemoveDirtyBitmap(n.FindDirtyBitmap("copy"))
	closeImage(t, g, r, "q")
	if got := qemuBitmaps(t, p); len(got) != 2 {
		t.Errorf("after removing one: %+v", got)
	}
	qemuCheck(t, p, false)
	qemuImg(t, "bitmap", "--remove", p, "b0")
	qemuImg(t, "bitmap", "--remove", p, "b1")
	qemuCheck(t, p, false)
}

// setBitmapFlags sets the flags of bitmap entry i in an image file.
func setBitmapFlags(t *testing.T, p string, i int, flags uint32) {
	t.Helper()
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	h := seedHeader(t, img)
	off := int(h.bitmaps.dirOffset)
	for ; i > 0; i-- {
		off += int(bitmapDirEntryLen(int(binary.BigEndian.Uint16(img[off+18:]))))
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], flags)
	if _, err := f.WriteAt(b[:], int64(off+12)); err != nil {
		t.Fatal(err)
	}
}

// TestBitmapInUse: a bitmap marked in use when the image is opened is
// inconsistent (not recording, no bits) and stays in the image as it is;
// the image cannot be resized under it; removing it removes it at once.
func TestBitmapInUse(t *testing.T) {
	p := newBitmapImage(t, "1M")
	qemuImg(t, "bitmap", "--add", p, "bad")
	qemuImg(t, "bitmap", "--add", p, "good")
	qemuIO(t, p, "write 0 64k")
	setBitmapFlags(t, p, 0, bmeInUse|bmeAuto)

	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	bad, good := n.FindDirtyBitmap("bad"), n.FindDirtyBitmap("good")
	if bad == nil || !bad.Inconsistent() || bad.Recording() || bad.Count() != 0 || !bad.Persistent() {
		t.Fatalf("bad: %+v", bad)
	}
	if good == nil || good.Inconsistent() || good.Count() != 65536 {
		t.Fatalf("good: %+v", good)
	}
	if err := r.Truncate(context.Background(), 2<<20, true); err == nil || !strings.Contains(err.Error(), "inconsistent") {
		t.Errorf("truncate with an inconsistent bitmap: %v", err)
	}
	closeImage(t, g, r, "q")
	got := qemuBitmaps(t, p)
	if len(got) != 2 || !slices.Equal(got[0].Flags, []string{"in-use", "auto"}) || !slices.Equal(got[1].Flags, []string{"auto"}) {
		t.Errorf("after close: %+v", got)
	}
	qemuCheck(t, p, false)

	g = newGraph()
	n, r = openImage(t, g, "q", p, nil)
	rm, ok := n.Impl().(interface {
		RemovePersistentBitmap(context.Context, string) error
	})
	if !ok {
		t.Fatal("qcow2 has no RemovePersistentBitmap")
	}
	if err := rm.RemovePersistentBitmap(context.Background(), "bad"); err != nil {
		t.Fatal(err)
	}
	n.RemoveDirtyBitmap(n.FindDirtyBitmap("bad"))
	if got := qemuBitmaps(t, p); len(got) != 1 || got[0].Name != "good" {
		t.Errorf("right after the removal: %+v", got)
	}
	if err := r.Truncate(context.Background(), 2<<20, true); err != nil {
		t.Errorf("truncate: %v", err)
	}
	closeImage(t, g, r, "q")
	qemuCheck(t, p, false)
	if got := qemuBitmaps(t, p); len(got) != 1 || got[0].Name != "good" {
		t.Errorf("after close: %+v", got)
	}
	qemuIO(t, p, "write 1536k 4k") // qemu accepts the resized bitmap
}

// TestBitmapLimits: what the format cannot hold is refused before
// anything is written; the image stays consistent.
func TestBitmapLimits(t *testing.T) {
	p := newBitmapImage(t, "1M")
	qemuImg(t, "bitmap", "--add", p, "old")
	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	can := n.Impl().(interface {
		CanStoreBitmap(string, int64) error
	})
	long := strings.Repeat("x", maxBitmapName+1)
	if err := can.CanStoreBitmap(long, 65536); err == nil {
		t.Error("a 1024-byte name was accepted")
	}
	if err := can.CanStoreBitmap("ok", 65536); err != nil {
		t.Error(err)
	}
	// The node itself refuses such a name (block-dirty-bitmap-add's
	// limit), so no store ever meets one.
	if _, err := n.AddDirtyBitmap(long, 65536); err == nil {
		t.Fatal("the node took a 1024-byte bitmap name")
	}
	closeImage(t, g, r, "q")
	got := qemuBitmaps(t, p)
	if len(got) != 1 || got[0].Name != "old" || slices.Contains(got[0].Flags, "in-use") {
		t.Errorf("after close: %+v", got)
	}
	qemuCheck(t, p, false)

	v2 := newBitmapImage(t, "1M", "-o", "compat=0.10")
	g = newGraph()
	n, r = openImage(t, g, "q", v2, nil)
	if err := n.Impl().(interface {
		CanStoreBitmap(string, int64) error
	}).CanStoreBitmap("b", 65536); err == nil || !strings.Contains(err.Error(), "v2") {
		t.Errorf("v2 image: %v", err)
	}
	closeImage(t, g, r, "q")
}

// TestBitmapsReopenReadOnly: going read-only stores the bitmaps (in use
// cleared); going read-write again marks them in use.
func TestBitmapsReopenReadOnly(t *testing.T) {
	p := newBitmapImage(t, "1M")
	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	b, err := n.AddDirtyBitmap("b", 65536)
	if err != nil {
		t.Fatal(err)
	}
	b.SetPersistent(true)
	if err := r.WriteAt(context.Background(), make([]byte, 512), 70000, 0); err != nil {
		t.Fatal(err)
	}
	q := n.Impl().(*image)
	ctx := context.Background()
	if _, err := q.ChangeReadOnly(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := qemuBitmaps(t, p); len(got) != 1 || !slices.Equal(got[0].Flags, []string{"auto"}) {
		t.Errorf("read-only: %+v", got)
	}
	if _, err := q.ChangeReadOnly(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := qemuBitmaps(t, p); len(got) != 1 || !slices.Equal(got[0].Flags, []string{"in-use", "auto"}) {
		t.Errorf("read-write again: %+v", got)
	}
	closeImage(t, g, r, "q")
	qemuCheck(t, p, false)
}
