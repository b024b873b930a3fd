//go:build linux

package mirror_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/file"
	_ "github.com/blockd/blockd/pkg/formats/nbd"
	"github.com/blockd/blockd/pkg/jobs/mirror"
	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// TestMirrorSpliceUnderWrites is TestMirrorUnderWrites from a file into
// an nbd node, the pair whose copies move the file's pages through a
// pipe into the NBD socket: writes racing those copies (a page changing
// while it sits in the pipe or the socket) still leave the target equal
// to the source.
func TestMirrorSpliceUnderWrites(t *testing.T) {
	for _, mode := range []mirror.CopyMode{"background", "write-blocking"} {
		t.Run(string(mode), func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "src.img")
			if err := os.WriteFile(img, bytes.Repeat([]byte("0123456789abcdef"), (8<<20)/16), 0o600); err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(dir, "nbd.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv := nbd.NewServer(nbd.ServerOptions{})
			mem := nbdtest.NewMem(8<<20, 4096)
			if _, err := srv.AddExport(mem, nbd.ExportOptions{Name: "e", Writable: true}); err != nil {
				t.Fatal(err)
			}
			go srv.Serve(l) //nolint:errcheck // ends with Close
			t.Cleanup(func() { srv.Close() })

			g := blocktest.NewGraph()
			blocktest.Open(t, g, fmt.Sprintf(`{"driver":"file","node-name":"src","filename":%q}`, img))
			blocktest.Open(t, g, fmt.Sprintf(`{"driver":"nbd","node-name":"tgt","server":{"type":"unix","path":%q},"export":"e"}`, sock))
			// Slower users than over memory: each copy crosses a
			// socket, and the job must catch up to reach READY.
			mirrorUnderWrites(t, g, mode, time.Millisecond)
		})
	}
}
