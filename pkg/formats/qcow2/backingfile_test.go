package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// changeBacking calls ChangeBackingFile the way the graph does: on the
// node's own Impl, under the graph lock.
func changeBacking(t *testing.T, g *block.Graph, n *block.Node, name, format string) error {
	t.Helper()
	c, ok := n.Impl().(block.BackingFileChanger)
	if !ok {
		t.Fatal("qcow2 does not implement block.BackingFileChanger")
	}
	g.Lock()
	defer g.Unlock()
	return c.ChangeBackingFile(context.Background(), name, format)
}

type imgInfo struct {
	BackingFilename       string `json:"backing-filename"`
	BackingFilenameFormat string `json:"backing-filename-format"`
}

func qemuInfo(t *testing.T, path string) imgInfo {
	t.Helper()
	var info imgInfo
	// stdout only: qemu-img warns on stderr about bitmaps blockd left
	// inconsistent.
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", path).Output()
	if err == nil {
		err = json.Unmarshal(out, &info)
	}
	if err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	return info
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// extensions lists the header extensions of a first cluster, each with its
// padding, as they are on disk.
func extensions(t *testing.T, b []byte) [][]byte {
	t.Helper()
	hl := v2HeaderLen
	if be32(b[4:]) >= 3 {
		hl = int(be32(b[100:]))
	}
	var exts [][]byte
	for off := hl; off+8 <= len(b); {
		typ, length := be32(b[off:]), int(be32(b[off+4:]))
		if typ == extEnd {
			return exts
		}
		size := 8 + (length+7)&^7
		exts = append(exts, b[off:off+size])
		off += size
	}
	t.Fatal("no end of the header extensions")
	return nil
}

// TestChangeBackingFile rewrites the backing file name of images qemu-img
// made and checks the result with qemu-img and by opening it again.
func TestChangeBackingFile(t *testing.T) {
	type change struct{ name, format string }
	tests := []struct {
		name    string
		create  []string // qemu-img create options for top.qcow2
		changes []change // the last one is checked
	}{
		{name: "v3 without backing", create: nil,
			changes: []change{{"base.qcow2", "qcow2"}}},
		{name: "v3 with backing format", create: []string{"-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"base.raw", "raw"}}},
		{name: "v3 format dropped", create: []string{"-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"base.qcow2", ""}}},
		{name: "v3 without backing format before", create: []string{"-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"base.qcow2", ""}, {"sub/other.qcow2", "qcow2"}}},
		{name: "v3 removed", create: []string{"-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"", ""}}},
		{name: "v3 removed, format ignored", create: []string{"-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"", "qcow2"}}},
		{name: "v2 without backing", create: []string{"-o", "compat=0.10"},
			changes: []change{{"base.raw", "raw"}}},
		{name: "v2 with backing", create: []string{"-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"sub/other.qcow2", "qcow2"}}},
		{name: "v2 removed", create: []string{"-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"", ""}}},
		{name: "512-byte clusters", create: []string{"-o", "cluster_size=512", "-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"sub/" + strings.Repeat("x", 200) + ".qcow2", "qcow2"}}},
		{name: "512-byte clusters without backing", create: []string{"-o", "cluster_size=512"},
			changes: []change{{"base.raw", "raw"}, {"base.qcow2", "qcow2"}}},
		{name: "extended L2", create: []string{"-o", "extended_l2=on", "-b", "base.qcow2", "-F", "qcow2"},
			changes: []change{{"base.raw", "raw"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "4M")
			qemuImg(t, "create", "-q", "-f", "raw", filepath.Join(dir, "base.raw"), "4M")
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "sub/other.qcow2"), "4M")
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "sub", strings.Repeat("x", 200)+".qcow2"), "4M")
			p := filepath.Join(dir, "top.qcow2")
			qemuImg(t, append(append([]string{"create", "-q", "-f", "qcow2"}, tt.create...), p, "4M")...)
			qemuIO(t, p, "write -P 0x11 0 64k", "write -P 0x22 1M 4k")

			g := newGraph()
			n, r := openImage(t, g, "q", p, map[string]any{"backing": nil})
			data := readAll(t, r)
			clusterSize := int(int64(1) << be32(readFile(t, p)[20:]))
			before := readFile(t, p)
			for _, c := range tt.changes {
				if err := changeBacking(t, g, n, c.name, c.format); err != nil {
					t.Fatalf("change to %q, %q: %v", c.name, c.format, err)
				}
			}
			last := tt.changes[len(tt.changes)-1]
			if last.name == "" {
				last.format = ""
			}
			if name, format := n.Impl().(block.BackingFiler).BackingFile(); name != last.name || format != last.format {
				t.Errorf("BackingFile() = %q, %q; want %q, %q", name, format, last.name, last.format)
			}
			if d := firstDiff(readAll(t, r), data); d != "" {
				t.Errorf("data changed: %s", d)
			}
			after := readFile(t, p)
			if d := firstDiff(after[clusterSize:], before[clusterSize:]); d != "" {
				t.Errorf("bytes after the first cluster changed: %s", d)
			}
			closeImage(t, g, r, "q")

			qemuCheck(t, p, false)
			info := qemuInfo(t, p)
			if info.BackingFilename != last.name || info.BackingFilenameFormat != last.format {
				t.Errorf("qemu-img info: backing %q format %q; want %q, %q", info.BackingFilename, info.BackingFilenameFormat, last.name, last.format)
			}

			// blockd opens the chain the header now names, relative to the
			// image's directory.
			g = newGraph()
			n, r = openImage(t, g, "q", p, map[string]any{"read-only": true})
			b := block.COWChild(n)
			switch {
			case last.name == "" && b != nil:
				t.Errorf("backing %s opened, want none", b.Node().Filename())
			case last.name != "" && b == nil:
				t.Errorf("no backing opened, want %s", last.name)
			case last.name != "" && b.Node().Filename() != filepath.Join(dir, last.name):
				t.Errorf("backing %s opened, want %s", b.Node().Filename(), filepath.Join(dir, last.name))
			}
			closeImage(t, g, r, "q")
			g = newGraph()
			_, r = openImage(t, g, "q", p, map[string]any{"read-only": true, "backing": nil})
			if d := firstDiff(readAll(t, r), data); d != "" {
				t.Errorf("data after reopen: %s", d)
			}
			closeImage(t, g, r, "q")
		})
	}
}

// TestChangeBackingFile_Refused checks the changes that must fail, each
// leaving the image file byte for byte as it was.
func TestChangeBackingFile_Refused(t *testing.T) {
	tests := []struct {
		name     string
		create   []string
		readOnly bool
		bname    string
		format   string
		class    error
		want     string
	}{
		{name: "name too long", create: []string{"-b", "base.qcow2", "-F", "qcow2"},
			bname: strings.Repeat("a", maxBackingName+1), format: "qcow2",
			class: block.ErrInvalid, want: "Backing file name too long"},
		{name: "format too long", create: []string{"-b", "base.qcow2", "-F", "qcow2"},
			bname: "base.qcow2", format: strings.Repeat("f", maxFormatName+1),
			class: block.ErrInvalid, want: "Backing format name too long"},
		{name: "no space in a 512-byte cluster", create: []string{"-o", "cluster_size=512", "-b", "base.qcow2", "-F", "qcow2"},
			bname: strings.Repeat("a", 400), format: "qcow2",
			class: block.ErrNoSpace, want: "Not enough space in the image header for the backing file name"},
		{name: "read-only", create: []string{"-b", "base.qcow2", "-F", "qcow2"}, readOnly: true,
			bname: "other.qcow2", format: "qcow2", class: block.ErrReadOnly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "4M")
			p := filepath.Join(dir, "top.qcow2")
			qemuImg(t, append(append([]string{"create", "-q", "-f", "qcow2"}, tt.create...), p, "4M")...)
			qemuIO(t, p, "write -P 0x11 0 64k")
			g := newGraph()
			n, r := openImage(t, g, "q", p, map[string]any{"backing": nil, "read-only": tt.readOnly})
			if !tt.readOnly {
				// Guest data in a new L2 table's range: the table stays in
				// the cache, and a refused change must not write it back.
				if err := r.WriteAt(context.Background(), bytes.Repeat([]byte{0x5a}, 4096), 3<<20, 0); err != nil {
					t.Fatal(err)
				}
			}
			before := readFile(t, p)
			err := changeBacking(t, g, n, tt.bname, tt.format)
			if err == nil || !errors.Is(err, tt.class) || tt.want != "" && err.Error() != tt.want {
				t.Fatalf("err = %v; want %q (%v)", err, tt.want, tt.class)
			}
			if name, format := n.Impl().(block.BackingFiler).BackingFile(); name != "base.qcow2" || format != "qcow2" {
				t.Errorf("BackingFile() = %q, %q after a failed change", name, format)
			}
			if d := firstDiff(readFile(t, p), before); d != "" {
				t.Errorf("image changed: %s", d)
			}
			closeImage(t, g, r, "q")
			qemuCheck(t, p, false)
			if info := qemuInfo(t, p); info.BackingFilename != "base.qcow2" || info.BackingFilenameFormat != "qcow2" {
				t.Errorf("qemu-img info: backing %q format %q", info.BackingFilename, info.BackingFilenameFormat)
			}
		})
	}
}

// TestChangeBackingFile_KeepsExtensions: extensions of other tools must
// survive a rewrite byte for byte, in their order, with the backing format
// extension moved to the front.
func TestChangeBackingFile_KeepsExtensions(t *testing.T) {
	dir := t.TempDir()
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "4M")
	qemuImg(t, "create", "-q", "-f", "raw", filepath.Join(dir, "other.raw"), "4M")
	p := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p, "4M")
	// Data first, so that the bitmap stays empty and owns exactly two
	// clusters: its directory and its table.
	qemuIO(t, p, "write -P 0x11 0 64k")
	qemuImg(t, "bitmap", "--add", p, "b0")

	// Insert an unknown extension, with nonzero padding, at the end of the
	// extension area qemu-img wrote; the backing file name moves down.
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 65536)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	exts := extensions(t, hdr)
	end := int(be32(hdr[100:]))
	for _, e := range exts {
		end += len(e)
	}
	unknown := []byte{0x12, 0x34, 0x56, 0x78, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', 0xde, 0xad, 0xbf}
	boff, bsize := int(be64(hdr[8:])), int(be32(hdr[16:]))
	name := append([]byte(nil), hdr[boff:boff+bsize]...)
	nh := append(append(append([]byte(nil), hdr[:end]...), unknown...), make([]byte, 8)...)
	binary.BigEndian.PutUint64(nh[8:], uint64(len(nh)))
	nh = append(nh, name...)
	if _, err := f.WriteAt(nh, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	qemuCheck(t, p, false)
	var wantExts [][]byte
	for _, e := range extensions(t, readFile(t, p)) {
		if be32(e) != extBackingFormat {
			wantExts = append(wantExts, append([]byte(nil), e...))
		}
	}
	if len(wantExts) != 3 { // feature table, bitmaps, unknown
		t.Fatalf("%d extensions besides the backing format, want 3", len(wantExts))
	}

	g := newGraph()
	n, r := openImage(t, g, "q", p, map[string]any{"backing": nil})
	data := readAll(t, r)
	if err := changeBacking(t, g, n, "other.raw", "raw"); err != nil {
		t.Fatal(err)
	}
	if d := firstDiff(readAll(t, r), data); d != "" {
		t.Errorf("data changed: %s", d)
	}
	closeImage(t, g, r, "q")

	got := extensions(t, readFile(t, p))
	if len(got) != 4 || be32(got[0]) != extBackingFormat || string(got[0][8:11]) != "raw" {
		t.Fatalf("extensions after the change: %d, first %#x", len(got), be32(got[0]))
	}
	for i, want := range wantExts {
		if be32(want) == extBitmaps {
			// blockd keeps the bitmap: stored again at close, in place.
			if be32(got[i+1]) != extBitmaps {
				t.Errorf("extension %d is %#x, want the bitmaps extension", i+1, be32(got[i+1]))
			}
			continue
		}
		if !bytes.Equal(got[i+1], want) {
			t.Errorf("extension %#x changed:\n got %x\nwant %x", be32(want), got[i+1], want)
		}
	}
	qemuCheck(t, p, false)
	info := qemuInfo(t, p)
	if info.BackingFilename != "other.raw" || info.BackingFilenameFormat != "raw" {
		t.Errorf("qemu-img info: backing %q format %q", info.BackingFilename, info.BackingFilenameFormat)
	}
}

// ext encodes a header extension with padding filled with pad.
func ext(typ uint32, data string, pad byte) []byte {
	e := make([]byte, 8+(len(data)+7)&^7)
	binary.BigEndian.PutUint32(e[0:], typ)
	binary.BigEndian.PutUint32(e[4:], uint32(len(data)))
	copy(e[8:], data)
	for i := 8 + len(data); i < len(e); i++ {
		e[i] = pad
	}
	return e
}

// rawHeader builds a first cluster by hand: a fixed header of the given
// version, exts, an end marker unless noEnd, and the backing file name.
func rawHeader(version uint32, clusterBits uint32, exts [][]byte, noEnd bool, name string) []byte {
	b := make([]byte, 1<<clusterBits)
	binary.BigEndian.PutUint32(b[0:], qcowMagic)
	binary.BigEndian.PutUint32(b[4:], version)
	binary.BigEndian.PutUint32(b[20:], clusterBits)
	off := v2HeaderLen
	if version == 3 {
		binary.BigEndian.PutUint32(b[96:], 4)
		binary.BigEndian.PutUint32(b[100:], 112)
		off = 112
	}
	for _, e := range exts {
		off += copy(b[off:], e)
	}
	if !noEnd {
		off += 8
	}
	if name != "" {
		binary.BigEndian.PutUint64(b[8:], uint64(off))
		binary.BigEndian.PutUint32(b[16:], uint32(len(name)))
		copy(b[off:], name)
	}
	return b
}

// TestHeaderWithBacking checks the layout headerWithBacking builds on
// hand-made headers: what is kept, in which order, and what is cleared.
func TestHeaderWithBacking(t *testing.T) {
	a := ext(0x0a0a0a0a, "first", 0xee)
	b := ext(0x0b0b0b0b, "second!!", 0)
	tests := []struct {
		name         string
		old          []byte
		bname, fmt   string
		want         []byte // the whole new first cluster
		wantErrClass error
	}{
		{name: "v2: format first, others in order",
			old:   rawHeader(2, 16, [][]byte{a, ext(extBackingFormat, "qcow2", 0), b}, false, "old.qcow2"),
			bname: "new.raw", fmt: "raw",
			want: rawHeader(2, 16, [][]byte{ext(extBackingFormat, "raw", 0), a, b}, false, "new.raw")},
		{name: "v3: format added",
			old:   rawHeader(3, 16, [][]byte{a}, false, ""),
			bname: "new", fmt: "qcow2",
			want: rawHeader(3, 16, [][]byte{ext(extBackingFormat, "qcow2", 0), a}, false, "new")},
		{name: "v3: removed",
			old:   rawHeader(3, 16, [][]byte{ext(extBackingFormat, "qcow2", 0), a, b}, false, strings.Repeat("n", 300)),
			bname: "", fmt: "",
			want: rawHeader(3, 16, [][]byte{a, b}, false, "")},
		{name: "v3: name without format",
			old:   rawHeader(3, 16, [][]byte{ext(extBackingFormat, "qcow2", 0)}, false, "old"),
			bname: "new", fmt: "",
			want: rawHeader(3, 16, nil, false, "new")},
		{name: "no end marker before the old name",
			old:   rawHeader(3, 16, [][]byte{a}, true, "old"),
			bname: "new", fmt: "raw",
			want: rawHeader(3, 16, [][]byte{ext(extBackingFormat, "raw", 0), a}, false, "new")},
		{name: "fills a 512-byte cluster exactly",
			old:   rawHeader(3, 9, nil, false, "old"),
			bname: strings.Repeat("x", 512-112-16-8), fmt: "qcow2",
			want: rawHeader(3, 9, [][]byte{ext(extBackingFormat, "qcow2", 0)}, false, strings.Repeat("x", 512-112-16-8))},
		{name: "one byte too many",
			old:   rawHeader(3, 9, nil, false, "old"),
			bname: strings.Repeat("x", 512-112-16-8+1), fmt: "qcow2",
			wantErrClass: block.ErrNoSpace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := append([]byte(nil), tt.old...)
			got, err := headerWithBacking(old, tt.bname, tt.fmt)
			if !bytes.Equal(old, tt.old) {
				t.Error("the old header was modified")
			}
			if tt.wantErrClass != nil {
				if !errors.Is(err, tt.wantErrClass) {
					t.Fatalf("err = %v, want %v", err, tt.wantErrClass)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Only the used areas, old and new, are written.
			oldEnd := int(be64(tt.old[8:]) + uint64(be32(tt.old[16:])))
			if len(got) < oldEnd || len(got) > len(tt.want) {
				t.Errorf("writes %d bytes; the old layout ends at %d", len(got), oldEnd)
			}
			whole := make([]byte, len(tt.want))
			copy(whole, got)
			if d := firstDiff(whole, tt.want); d != "" {
				t.Errorf("new header: %s", d)
			}
		})
	}
}

// recorder is a filter that logs the writes and flushes that pass it.
type recorder struct {
	block.Forward
	mu  sync.Mutex
	ops []string
}

type recorderOptions struct {
	File block.NodeRef `json:"file"`
}

func (r *recorder) log(s string) {
	r.mu.Lock()
	r.ops = append(r.ops, s)
	r.mu.Unlock()
}

func (r *recorder) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	r.log(fmt.Sprintf("W %d %d", off, len(p)))
	return r.Forward.WriteAt(ctx, p, off, f)
}

func (r *recorder) Flush(ctx context.Context) error {
	r.log("F")
	return r.Forward.Flush(ctx)
}

func init() {
	block.Register("qcow2-test-recorder", block.KindFilter, func(ctx context.Context, o *block.Opener, opts *recorderOptions) (block.Impl, error) {
		c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
		if err != nil {
			return nil, err
		}
		return &recorder{Forward: block.Forward{C: c}}, nil
	})
}

// TestChangeBackingFile_Order checks the crash safety of the rewrite on
// the requests the file sees: everything the image holds is written and
// flushed before the header names the new backing, and the header is one
// write followed by a flush.
func TestChangeBackingFile_Order(t *testing.T) {
	dir := t.TempDir()
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "64M")
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "other.qcow2"), "64M")
	p := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p, "64M")
	g := newGraph()
	opts := nodeOpts("q", p, map[string]any{"backing": nil})
	opts = strings.Replace(opts, `"file":{"driver":"file"`, `"file":{"driver":"qcow2-test-recorder","node-name":"rec","file":{"driver":"file"`, 1)
	opts = strings.Replace(opts, `"}`, `"}}`, 1)
	n := openRetry(t, g, opts)
	r := newRootT(t, n, block.PermConsistentRead|block.PermWrite)
	rec := block.StorageChild(n).Node().Impl().(*recorder)

	// Guest data in a new L2 table's range, not flushed: the driver holds
	// metadata in its caches that must reach the disk first.
	ctx := context.Background()
	for _, off := range []int64{0, 40 << 20} {
		if err := r.WriteAt(ctx, bytes.Repeat([]byte{0x5a}, 65536), off, 0); err != nil {
			t.Fatal(err)
		}
	}
	rec.mu.Lock()
	rec.ops = nil
	rec.mu.Unlock()
	if err := changeBacking(t, g, n, "other.qcow2", "qcow2"); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	ops := append([]string(nil), rec.ops...)
	rec.mu.Unlock()
	closeImage(t, g, r, "q")

	t.Logf("requests: %q", ops)
	k := len(ops)
	if k < 4 || ops[k-1] != "F" || !strings.HasPrefix(ops[k-2], "W 0 ") || ops[k-3] != "F" {
		t.Fatalf("requests end with %q; want ..., write, F, W 0 n, F", ops)
	}
	if !strings.HasPrefix(ops[0], "W ") {
		t.Errorf("requests %q: the cached metadata was not written first", ops)
	}
	for _, op := range ops[:k-2] {
		if strings.HasPrefix(op, "W 0 ") {
			t.Errorf("requests %q: more than one write of the header", ops)
		}
	}
	qemuCheck(t, p, false)
	if info := qemuInfo(t, p); info.BackingFilename != "other.qcow2" {
		t.Errorf("qemu-img info: backing %q", info.BackingFilename)
	}
}
