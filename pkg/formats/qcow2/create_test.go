package qcow2

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// TestCreateErrors checks blockdev-create's validation against the
// messages qsd 7.2 gives (recorded with qemu-storage-daemon).
func TestCreateErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts CreateOptions
		want string
	}{
		{"size", CreateOptions{Size: 1000}, "Image size must be a multiple of 512 bytes"},
		{"size-negative", CreateOptions{Size: 1<<64 - 1}, "Image size must be a multiple of 512 bytes"},
		{"cluster-odd", CreateOptions{ClusterSize: ptr(uint64(1000))}, "Cluster size must be a power of two between 512 and 2048k"},
		{"cluster-small", CreateOptions{ClusterSize: ptr(uint64(256))}, "Cluster size must be a power of two between 512 and 2048k"},
		{"cluster-big", CreateOptions{ClusterSize: ptr(uint64(4 << 20))}, "Cluster size must be a power of two between 512 and 2048k"},
		{"refcount-3", CreateOptions{RefcountBits: ptr(int64(3))}, "Refcount width must be a power of two and may not exceed 64 bits"},
		{"refcount-128", CreateOptions{RefcountBits: ptr(int64(128))}, "Refcount width must be a power of two and may not exceed 64 bits"},
		{"refcount-0", CreateOptions{RefcountBits: ptr(int64(0))}, "Refcount width must be a power of two and may not exceed 64 bits"},
		{"v2-refcount", CreateOptions{Version: ptr(Version("v2")), RefcountBits: ptr(int64(8))}, "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"},
		{"v2-lazy", CreateOptions{Version: ptr(Version("v2")), LazyRefcounts: ptr(true)}, "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
		{"v2-zstd", CreateOptions{Version: ptr(Version("v2")), CompressionType: ptr(CompressionType("zstd"))}, "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
		{"v2-extl2", CreateOptions{Version: ptr(Version("v2")), ExtendedL2: ptr(true)}, "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
		{"extl2-small", CreateOptions{ExtendedL2: ptr(true), ClusterSize: ptr(uint64(4096))}, "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"},
		{"backing-fmt", CreateOptions{BackingFmt: ptr(DriverName("qcow2"))}, "Backing format cannot be used without backing file"},
		{"backing-prealloc", CreateOptions{BackingFile: ptr("x.qcow2"), Preallocation: ptr(Preallocation("metadata"))}, "Backing file and preallocation can only be used at the same time if extended_l2 is on"},
		{"data-file-raw", CreateOptions{DataFileRaw: ptr(true)}, "data-file-raw requires data-file"},
		{"data-file", CreateOptions{DataFile: &block.NodeRef{Name: "x"}}, "External data files are not supported"},
		{"encrypt", CreateOptions{Encrypt: json.RawMessage(`{"format":"luks","key-secret":"s"}`)}, "Encrypted qcow2 images are not supported"},
		{"too-big", CreateOptions{Size: 1 << 62}, "Could not resize image: Failed to grow the L1 table: File too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			if opts.Size == 0 {
				opts.Size = 1 << 20
			}
			err := tryCreateImage(filepath.Join(t.TempDir(), "x.qcow2"), opts)
			if err == nil || err.Error() != tc.want && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want %q", err, tc.want)
			}
		})
	}
}

// TestCreateInfo creates images and compares what qemu-img info says
// with what was asked for; the images pass qemu-img check.
func TestCreateInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts CreateOptions
		want map[string]any // expected format-specific data members
		cs   int64
	}{
		{"defaults", CreateOptions{}, map[string]any{"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": false, "refcount-bits": 16.0, "corrupt": false, "extended-l2": false}, 65536},
		{"v2", CreateOptions{Version: ptr(Version("v2"))}, map[string]any{"compat": "0.10", "compression-type": "zlib", "refcount-bits": 16.0}, 65536},
		{"all", CreateOptions{ClusterSize: ptr(uint64(32768)), RefcountBits: ptr(int64(4)), LazyRefcounts: ptr(true), ExtendedL2: ptr(true), CompressionType: ptr(CompressionType("zstd"))},
			map[string]any{"compat": "1.1", "compression-type": "zstd", "lazy-refcounts": true, "refcount-bits": 4.0, "corrupt": false, "extended-l2": true}, 32768},
		{"c512-backing", CreateOptions{ClusterSize: ptr(uint64(512)), BackingFile: ptr("base.img"), BackingFmt: ptr(DriverName("raw"))},
			map[string]any{"refcount-bits": 16.0}, 512},
		{"c2m-falloc", CreateOptions{ClusterSize: ptr(uint64(2 << 20)), Preallocation: ptr(Preallocation("falloc"))}, map[string]any{"compat": "1.1"}, 2 << 20},
		{"big", CreateOptions{Size: 1 << 40, ClusterSize: ptr(uint64(4096))}, map[string]any{"compat": "1.1"}, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := filepath.Join(dir, "x.qcow2")
			if err := os.WriteFile(filepath.Join(dir, "base.img"), make([]byte, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			opts := tc.opts
			if opts.Size == 0 {
				opts.Size = 9<<20 + 512
			}
			createImage(t, p, opts)
			qemuCheck(t, p, false)
			var info struct {
				VirtualSize    int64  `json:"virtual-size"`
				ClusterSize    int64  `json:"cluster-size"`
				BackingFile    string `json:"backing-filename"`
				BackingFormat  string `json:"backing-filename-format"`
				DirtyFlag      bool   `json:"dirty-flag"`
				FormatSpecific struct {
					Type string         `json:"type"`
					Data map[string]any `json:"data"`
				} `json:"format-specific"`
			}
			out := qemuImg(t, "info", "--output=json", p)
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatal(err)
			}
			if info.VirtualSize != int64(opts.Size) || info.ClusterSize != tc.cs || info.DirtyFlag || info.FormatSpecific.Type != "qcow2" {
				t.Fatalf("info: %s", out)
			}
			for k, v := range tc.want {
				if info.FormatSpecific.Data[k] != v {
					t.Errorf("%s: %v, want %v (%s)", k, info.FormatSpecific.Data[k], v, out)
				}
			}
			if opts.BackingFile != nil && (info.BackingFile != *opts.BackingFile || info.BackingFormat != string(*opts.BackingFmt)) {
				t.Errorf("backing: %s", out)
			}
			// blockd reports the same.
			g := newGraph()
			n := openRetry(t, g, nodeOpts("q", p, map[string]any{"read-only": true, "backing": nil}))
			ii := n.Impl().(block.Infoer).ImageInfo(context.Background())
			b1, _ := json.Marshal(ii.FormatSpecific)
			b2, _ := json.Marshal(info.FormatSpecific)
			var m1, m2 any
			_ = json.Unmarshal(b1, &m1)
			_ = json.Unmarshal(b2, &m2)
			if !reflect.DeepEqual(m1, m2) || ii.ClusterSize != tc.cs || ii.DirtyFlag == nil || *ii.DirtyFlag {
				t.Errorf("blockd info %s %+v; qemu-img %s", b1, ii, b2)
			}
			name, format := n.Impl().(block.BackingFiler).BackingFile()
			if name != info.BackingFile || format != info.BackingFormat {
				t.Errorf("BackingFile() = %q, %q", name, format)
			}
			closeImage(t, g, nil, "q")
		})
	}
}

// TestCreatePermissionConflict: creating on a file node a qcow2 node
// uses fails with qsd's permission message.
func TestCreatePermissionConflict(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.qcow2")
	createImage(t, p, CreateOptions{Size: 1 << 20})
	g := newGraph()
	blocktest.Open(t, g, fmt.Sprintf(`{"driver":"file","node-name":"f","filename":%q}`, p))
	blocktest.Open(t, g, `{"driver":"qcow2","node-name":"q","file":"f"}`)
	err := create(context.Background(), g, &CreateOptions{File: block.NodeRef{Name: "f"}, Size: 1 << 20})
	want := "Permission conflict on node 'f': permissions 'write, resize' are both required by an unnamed block device (uses node 'f' as 'root' child) and unshared by node 'q' (uses node 'f' as 'file' child)."
	if err == nil || err.Error() != want {
		t.Fatalf("error %v\nwant %s", err, want)
	}
	if err := create(context.Background(), g, &CreateOptions{File: block.NodeRef{Name: "nosuch"}, Size: 1 << 20}); err == nil || err.Error() != "Cannot find device='nosuch' nor node-name='nosuch'" {
		t.Fatalf("error %v", err)
	}
}
