package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// The reference image of the hostile tests: 4 KiB clusters, 1 MiB, the
// first 8 KiB written. Header at 0, refcount table at 0x1000, refcount
// block at 0x2000, L1 table at 0x3000, L2 table at 0x4000, data at 0x5000
// and 0x6000.
const (
	hRefTable = 0x1000
	hRefBlock = 0x2000
	hL1       = 0x3000
	hL2       = 0x4000
	hData     = 0x5000
)

func hostileBase(t testing.TB, dir string, opts string) string {
	t.Helper()
	p := filepath.Join(dir, "h.qcow2")
	o := "cluster_size=4k"
	if strings.Contains(opts, "cluster_size") {
		o = opts
	} else if opts != "" {
		o += "," + opts
	}
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", o, p, "1M")
	qemuIO(t, p, "write -P 0x11 0 8k")
	return p
}

func patch(t testing.TB, path string, off int64, v any) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b []byte
	switch x := v.(type) {
	case uint64:
		b = binary.BigEndian.AppendUint64(nil, x)
	case uint32:
		b = binary.BigEndian.AppendUint32(nil, x)
	case uint16:
		b = binary.BigEndian.AppendUint16(nil, x)
	case []byte:
		b = x
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// events records emitted events.
type events struct {
	mu   sync.Mutex
	list []map[string]any
}

func (e *events) Emit(name string, data any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	m, _ := data.(map[string]any)
	m = map[string]any{"event": name, "data": m}
	e.list = append(e.list, m)
}

type hostileCase struct {
	name    string
	opts    string // qemu-img create -o additions
	patch   func(t testing.TB, p string)
	ro      bool
	openErr string // expected open error ("": open succeeds)
	// io, when the open succeeds: what to do and the expected error.
	io      func(r *block.Root) error
	ioErr   string
	corrupt bool // a BLOCK_IMAGE_CORRUPTED event is expected
}

func readFirst(r *block.Root) error { return r.ReadAt(context.Background(), make([]byte, 16384), 0, 0) }
func writeFirst(r *block.Root) error {
	return r.WriteAt(context.Background(), make([]byte, 16384), 0, 0)
}

// allocate writes into unallocated space, and flushes.
func allocate(r *block.Root) error {
	ctx := context.Background()
	if err := r.WriteAt(ctx, []byte("x"), 512<<10, 0); err != nil {
		return err
	}
	return r.Flush(ctx)
}

func hostileCases() []hostileCase {
	u32 := func(off int64, v uint32) func(testing.TB, string) {
		return func(t testing.TB, p string) { patch(t, p, off, v) }
	}
	u64 := func(off int64, v uint64) func(testing.TB, string) {
		return func(t testing.TB, p string) { patch(t, p, off, v) }
	}
	both := func(fs ...func(testing.TB, string)) func(testing.TB, string) {
		return func(t testing.TB, p string) {
			for _, f := range fs {
				f(t, p)
			}
		}
	}
	return []hostileCase{
		{name: "magic", patch: u32(0, 0x12345678), openErr: "Image is not in qcow2 format"},
		{name: "truncated", patch: func(t testing.TB, p string) { os.Truncate(p, 50) }, openErr: "qcow2 header too short"},
		{name: "version", patch: u32(4, 4), openErr: "Unsupported qcow2 version 4"},
		{name: "cluster-bits-small", patch: u32(20, 8), openErr: "Unsupported cluster size: 2^8"},
		{name: "cluster-bits-huge", patch: u32(20, 40), openErr: "Unsupported cluster size: 2^40"},
		{name: "header-length-big", patch: u32(100, 70000), openErr: "qcow2 header exceeds cluster size"},
		{name: "header-length-small", patch: u32(100, 100), openErr: "qcow2 header too short"},
		{name: "unknown-incompat", patch: u64(72, 1<<40), openErr: "Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000"},
		{name: "data-file", opts: "cluster_size=64k", patch: u64(72, 1<<2), openErr: "Unsupported qcow2 feature(s): external data file"},
		{name: "named-incompat", opts: "cluster_size=64k", patch: both(u64(72, 1<<9|1<<33), renameFeature(4, 9, "fancy feature")),
			openErr: "Unsupported qcow2 feature(s): fancy feature, Unknown incompatible feature: 200000000"},
		{name: "corrupt-rw", patch: u64(72, 2), openErr: "qcow2: Image is corrupt; cannot be opened read/write"},
		{name: "corrupt-ro", patch: u64(72, 2), ro: true, io: readFirst},
		{name: "compression-bit", patch: u64(72, 1<<3), openErr: "Compression type incompatible feature bit must not be set"},
		{name: "compression-type", patch: func(t testing.TB, p string) { patch(t, p, 104, []byte{7}) }, openErr: "Compression type incompatible feature bit must be set"},
		{name: "refcount-order", patch: u32(96, 7), openErr: "Reference count entry width too large; may not exceed 64 bits"},
		{name: "l1-huge", patch: u32(36, 0x7fffffff), openErr: "Active L1 table too large"},
		{name: "l1-unaligned", patch: u64(40, hL1+1), openErr: "Active L1 table offset invalid"},
		{name: "l1-small", patch: u32(36, 0), openErr: "L1 table is too small"},
		{name: "size-huge", patch: u64(24, 1<<62), openErr: "Image is too big"},
		{name: "reftable-huge", patch: u32(56, 0x7fffffff), openErr: "Reference count table too large"},
		{name: "reftable-empty", patch: u32(56, 0), openErr: "Image does not contain a reference count table"},
		{name: "l1-index-zero-hex", patch: u64(hL1, 1<<63|0x4200), io: readFirst, ioErr: "L2 table offset 0x4200 unaligned (L1 index: 0)", corrupt: true},
		{name: "reftable-unaligned", patch: u64(48, hRefTable+8), openErr: "Reference count table offset invalid"},
		{name: "backing-offset", patch: both(u64(8, 70000), u32(16, 5)), openErr: "Invalid backing file offset"},
		{name: "backing-name-long", patch: both(u64(8, 1000), u32(16, 3000)), openErr: "Backing file name too long"},
		{name: "extension-length", patch: u32(112+4, 100000), openErr: "Header extension too large"},
		{name: "snapshots-many", patch: both(u32(60, 1000000), u64(64, 0x8000)), openErr: "Snapshot table too large"},
		{name: "encrypted", patch: u32(32, 1), openErr: "Encrypted qcow2 images are not supported"},
		{name: "encryption-unknown", patch: u32(32, 3), openErr: "Unsupported encryption method 3"},
		{name: "backing-missing", patch: setBacking("nonexistent.qcow2"), openErr: "Could not open backing file"},
		{name: "backing-self", patch: setBacking("h.qcow2"), openErr: "backing file loop"},
		{name: "backing-protocol", patch: setBacking("nbd://example.com/x"), openErr: "is not a plain file name"},
		// The CVE-2024-4467 class: what QEMU reads as a protocol or a
		// json: pseudo-filename is never followed from a header.
		{name: "backing-protocol-colon", patch: setBacking("nbd:127.0.0.1:1"), openErr: "is not a plain file name"},
		{name: "backing-ssh", patch: setBacking("ssh:localhost"), openErr: "is not a plain file name"},
		{name: "backing-json", patch: setBacking(`json:{"driver":"file","filename":"/etc/passwd"}`), openErr: "is not a plain file name"},
		{name: "backing-file-prefix", patch: setBacking("file:/etc/passwd"), openErr: "is not a plain file name"},
		// Run time: bad tables.
		{name: "l2-offset-unaligned", patch: u64(hL1, 1<<63|0x4200), io: readFirst, ioErr: "L2 table offset 0x4200 unaligned", corrupt: true},
		{name: "l2-offset-eof", patch: u64(hL1, 1<<63|0x100000), io: readFirst, ioErr: "beyond the end of the image file", corrupt: true},
		{name: "l2-offset-eof-ro", patch: u64(hL1, 1<<63|0x100000), ro: true, io: readFirst, ioErr: "beyond the end of the image file", corrupt: true},
		{name: "data-unaligned", patch: u64(hL2, 1<<63|0x5200), io: readFirst, ioErr: "Cluster allocation offset 0x5200 unaligned", corrupt: true},
		{name: "data-eof", patch: u64(hL2, 1<<63|0x7fff000), io: readFirst, ioErr: "beyond the end of the image file", corrupt: true},
		{name: "data-into-l1", patch: u64(hL2, 1<<63|hL1), io: writeFirst, ioErr: "Preventing invalid write on metadata (overlaps with active L1 table)", corrupt: true},
		{name: "data-into-refblock", patch: u64(hL2, 1<<63|hRefBlock), io: writeFirst, ioErr: "overlaps with refcount block", corrupt: true},
		{name: "data-into-header", patch: u64(hL2, 1<<63|0x1000), io: writeFirst, ioErr: "overlaps with refcount table", corrupt: true},
		{name: "l2-refcount-zero", patch: func(t testing.TB, p string) { patch(t, p, hRefBlock+4*2, uint16(0)) }, io: allocate, ioErr: "Preventing invalid allocation", corrupt: true},
		{name: "refcount-underflow", patch: func(t testing.TB, p string) { patch(t, p, hRefBlock+5*2, uint16(0)) },
			io: func(r *block.Root) error {
				ctx := context.Background()
				if err := r.Discard(ctx, 0, 4096); err != nil {
					return err
				}
				return r.Flush(ctx)
			}, ioErr: "its refcount is already 0", corrupt: true},
		{name: "refblock-unaligned", patch: u64(hRefTable, hRefBlock+0x200), openErr: "Refblock offset 0x2200 unaligned"},
		{name: "compressed-garbage", patch: u64(hL2, 1<<62|0x5000), io: readFirst, ioErr: "compressed cluster"},
		{name: "compressed-eof", patch: u64(hL2, 1<<62|0x900000), io: readFirst, ioErr: "outside the image file", corrupt: true},
		{name: "extl2-bitmap", opts: "extended_l2=on,cluster_size=16k", patch: extL2Garbage, io: readFirst, ioErr: "invalid subcluster bitmap", corrupt: true},
		{name: "dirty-broken", opts: "lazy_refcounts=on", patch: both(u64(72, 1), u64(hL1, 1<<63|0x4200)), openErr: "Could not repair dirty image"},
		{name: "dirty-ro", opts: "lazy_refcounts=on", patch: u64(72, 1), ro: true, io: readFirst},
	}
}

// renameFeature moves feature table entry (incompatible, from) to bit to
// with a new name.
func renameFeature(from, to byte, name string) func(testing.TB, string) {
	return func(t testing.TB, p string) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i := 112 + 8; i+48 <= 4096; i += 48 {
			if b[i] == 0 && b[i+1] == from {
				e := make([]byte, 48)
				e[1] = to
				copy(e[2:], name)
				patch(t, p, int64(i), e)
				return
			}
		}
		t.Fatal("feature not found")
	}
}

// setBacking gives the image a backing file name (format qcow2).
func setBacking(name string) func(testing.TB, string) {
	return func(t testing.TB, p string) {
		patch(t, p, 2048, []byte(name))
		patch(t, p, 8, uint64(2048))
		patch(t, p, 16, uint32(len(name)))
	}
}

// extL2Garbage sets a subcluster both allocated and zero in the first
// extended L2 entry (16 KiB clusters: the L2 table is at 0x10000*...).
func extL2Garbage(t testing.TB, p string) {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	l1 := int64(binary.BigEndian.Uint64(b[40:]))
	l2 := int64(binary.BigEndian.Uint64(b[l1:]) & l1OffsetMask)
	patch(t, p, l2+8, uint64(1)<<32|1)
}

// TestHostileImages opens crafted images: each gives a clear error, none
// a panic, and a corruption found at run time is reported once, marks
// the image corrupt if it is writable, and stops further writes.
func TestHostileImages(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := hostileBase(t, dir, tc.opts)
			tc.patch(t, p)
			g := newGraph()
			ev := &events{}
			g.SetEmitter(ev)
			extra := map[string]any{}
			if tc.ro {
				extra["read-only"] = true
			}
			n, err := blocktestTryOpen(g, nodeOpts("q", p, extra))
			if tc.openErr != "" {
				if err == nil {
					t.Fatalf("opened; want error %q", tc.openErr)
				}
				if !strings.Contains(err.Error(), tc.openErr) {
					t.Fatalf("error %q; want %q", err, tc.openErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			_ = n
			perm := block.PermConsistentRead
			if !tc.ro {
				perm |= block.PermWrite
			}
			r := newRootT(t, n, perm)
			err = tc.io(r)
			switch {
			case tc.ioErr == "" && err != nil:
				t.Fatalf("io: %v", err)
			case tc.ioErr != "" && err == nil:
				t.Fatalf("io succeeded; want %q", tc.ioErr)
			case tc.ioErr != "" && !strings.Contains(err.Error(), tc.ioErr):
				t.Fatalf("io error %q; want %q", err, tc.ioErr)
			}
			if tc.ioErr != "" && tc.corrupt && !errors.Is(err, block.ErrCorrupt) {
				t.Errorf("error %v is not ErrCorrupt", err)
			}
			ev.mu.Lock()
			nev := len(ev.list)
			var first map[string]any
			if nev > 0 {
				first = ev.list[0]
			}
			ev.mu.Unlock()
			if tc.corrupt != (nev > 0) {
				t.Fatalf("corruption events: %v", ev.list)
			}
			if tc.corrupt {
				data := first["data"].(map[string]any)
				if first["event"] != "BLOCK_IMAGE_CORRUPTED" || data["node-name"] != "q" || data["device"] != "" || data["fatal"] != !tc.ro {
					t.Fatalf("event %v", first)
				}
				if !tc.ro {
					// Further writes are refused; so is a read-write open.
					if err := r.WriteAt(context.Background(), []byte("x"), 900<<10, 0); !errors.Is(err, block.ErrCorrupt) {
						t.Fatalf("write after corruption: %v", err)
					}
				}
			}
			closeImage(t, g, r, "q")
			if tc.corrupt && !tc.ro {
				_, err := blocktestTryOpen(g, nodeOpts("q", p, nil))
				if err == nil || !strings.Contains(err.Error(), "Image is corrupt") {
					t.Fatalf("reopen of a corrupt image: %v", err)
				}
			}
		})
	}
}
