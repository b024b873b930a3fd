package block_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/file"
)

// hdrOptions configure a test format whose image header names a backing
// file: all BackingFileName asks of an overlay.
type hdrOptions struct {
	File   block.NodeRef `json:"file"`
	Header string        `json:"header"`
}

// hdrImage implements only what the graph calls on open and close; the
// embedded nil Impl makes any I/O a test bug that panics.
type hdrImage struct {
	block.Impl
	file   *block.Child
	header string
}

func (h *hdrImage) Caps() block.Caps                        { return block.Caps{} }
func (h *hdrImage) Size(ctx context.Context) (int64, error) { return h.file.Size(), nil }
func (h *hdrImage) Close() error                            { return nil }
func (h *hdrImage) BackingFile() (string, string)           { return h.header, "" }

func init() {
	block.Register("test-hdr", block.KindFormat, func(ctx context.Context, o *block.Opener, opts *hdrOptions) (block.Impl, error) {
		c, err := o.Attach(ctx, "file", opts.File, block.RoleImage)
		if err != nil {
			return nil, err
		}
		return &hdrImage{file: c, header: opts.Header}, nil
	})
}

func TestBackingFileName(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"top.img", "base.img", "sub/base.img", "a/top.img", "b/base.img", "odd:dir/base.img"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, 65536), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	file := func(name string) string {
		return fmt.Sprintf(`{"driver":"file","filename":%q}`, filepath.Join(dir, name))
	}
	cow := func(storage string) string {
		return `{"driver":"blocktest-cow","node-name":"b","file":` + storage + `}`
	}
	tests := []struct {
		name    string
		top     string // the overlay's image file, under dir
		header  string // what the overlay's header says now
		filter  bool   // a filter above the overlay
		backing string // options of the new backing node "b"; "" none
		want    string // under dir unless absolute or relative is set
		rel     bool   // want is relative, as given
		format  string
		err     string
	}{
		{name: "absolute", top: "top.img", header: "/elsewhere/old.img",
			backing: cow(file("base.img")), want: "base.img", format: "blocktest-cow"},
		{name: "no header name yet", top: "top.img", header: "",
			backing: cow(file("base.img")), want: "base.img", format: "blocktest-cow"},
		{name: "relative, same directory", top: "top.img", header: "old.img",
			backing: cow(file("base.img")), want: "base.img", rel: true, format: "blocktest-cow"},
		{name: "relative, subdirectory", top: "top.img", header: "x/old.img",
			backing: cow(file("sub/base.img")), want: "sub/base.img", rel: true, format: "blocktest-cow"},
		{name: "relative, parent directory", top: "a/top.img", header: "../old.img",
			backing: cow(file("b/base.img")), want: "../b/base.img", rel: true, format: "blocktest-cow"},
		{name: "relative name with a colon is made absolute", top: "top.img", header: "old.img",
			backing: cow(file("odd:dir/base.img")), want: "odd:dir/base.img", format: "blocktest-cow"},
		{name: "filter above the backing", top: "top.img", header: "/old.img",
			backing: `{"driver":"blocktest-filter","node-name":"b","file":{"driver":"blocktest-cow","file":` + file("base.img") + `}}`,
			want:    "base.img", format: "blocktest-cow"},
		{name: "filter between the backing and its file", top: "top.img", header: "old.img",
			backing: cow(`{"driver":"blocktest-filter","file":` + file("base.img") + `}`),
			want:    "base.img", rel: true, format: "blocktest-cow"},
		{name: "filter above the overlay", top: "a/top.img", header: "old.img", filter: true,
			backing: cow(file("base.img")), want: "../base.img", rel: true, format: "blocktest-cow"},
		{name: "backing is the file node itself", top: "top.img", header: "/old.img",
			backing: `{"driver":"file","node-name":"b","filename":"` + filepath.Join(dir, "base.img") + `"}`,
			want:    "base.img", format: "raw"},
		{name: "no backing", top: "top.img", header: "old.img"},
		{name: "not a plain file", top: "top.img", header: "old.img",
			backing: cow(`{"driver":"blocktest-mem","size":65536}`),
			err:     "Cannot name node 'b' in the image header of 'top': it is not stored in a plain file"},
		{name: "protocol other than file", top: "top.img", header: "old.img",
			backing: `{"driver":"blocktest-mem","node-name":"b","size":65536}`,
			err:     "Cannot name node 'b' in the image header of 'top': it is not stored in a plain file"},
		{name: "format over a format", top: "top.img", header: "old.img",
			backing: cow(`{"driver":"blocktest-cow","file":` + file("base.img") + `}`),
			err:     "Cannot name node 'b' in the image header of 'top': it is not stored in a plain file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := blocktest.NewGraph()
			// Close the files, and so drop their image locks, before the
			// next case opens them again.
			var opened []string
			t.Cleanup(func() {
				for i := len(opened) - 1; i >= 0; i-- {
					tx := g.Begin()
					if err := tx.Delete(opened[i]); err != nil {
						tx.Abort()
						t.Errorf("delete %s: %v", opened[i], err)
						continue
					}
					if err := tx.Commit(); err != nil {
						t.Errorf("delete %s: %v", opened[i], err)
					}
				}
			})
			open := func(opts string) *block.Node {
				n := blocktest.Open(t, g, opts)
				opened = append(opened, n.Name())
				return n
			}
			top := open(fmt.Sprintf(`{"driver":"test-hdr","node-name":"top","header":%q,"file":%s,"read-only":true}`, tt.header, file(tt.top)))
			overlay := top
			if tt.filter {
				overlay = open(`{"driver":"blocktest-filter","node-name":"flt","file":"top"}`)
			}
			var backing *block.Node
			if tt.backing != "" {
				backing = open(tt.backing)
			}
			g.Lock()
			name, format, err := block.BackingFileName(overlay, backing)
			g.Unlock()
			if tt.err != "" {
				if err == nil || err.Error() != tt.err || !errors.Is(err, block.ErrNotSupported) {
					t.Fatalf("err = %v, want %q (ErrNotSupported)", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if want != "" && !tt.rel {
				want = filepath.Join(dir, want)
			}
			if name != want || format != tt.format {
				t.Errorf("got %q, %q; want %q, %q", name, format, want, tt.format)
			}
		})
	}
}
