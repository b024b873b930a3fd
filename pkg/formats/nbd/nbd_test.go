package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/nbd"
	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// serve starts blockd's own NBD server with one export of mem on a UNIX
// socket and returns the socket's path and the server.
func serve(t *testing.T, mem *nbdtest.Mem, o nbd.ExportOptions) (string, *nbd.Server) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(nbd.ServerOptions{})
	if _, err := srv.AddExport(mem, o); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	return sock, srv
}

func nodeJSON(sock, export, extra string) string {
	return fmt.Sprintf(`{"driver":"nbd","node-name":"dut","server":{"type":"unix","path":%q},"export":%q%s}`, sock, export, extra)
}

// TestDriverSuite runs the generic driver contract over a writable export.
func TestDriverSuite(t *testing.T) {
	blocktest.RunDriverSuite(t, blocktest.DriverCase{
		Open: func(t *testing.T, g *block.Graph) *block.Node {
			sock, _ := serve(t, nbdtest.NewMem(8<<20, 4096), nbd.ExportOptions{Name: "e", Writable: true})
			return blocktest.Open(t, g, nodeJSON(sock, "e", ""))
		},
		Stores:    true,
		ZeroReads: true,
	})
}

func open(t *testing.T, sock, export, extra string, perm block.Perm) (*block.Node, *block.Root) {
	t.Helper()
	n := blocktest.Open(t, blocktest.NewGraph(), nodeJSON(sock, export, extra))
	return n, blocktest.NewRoot(t, n, perm, block.PermAll)
}

// TestBlockStatusAndLimits: holes, zeroes and data come through
// base:allocation; the server's block sizes become the node's limits;
// the filename is QEMU's NBD URI.
func TestBlockStatusAndLimits(t *testing.T) {
	ctx := context.Background()
	mem := nbdtest.NewMem(4<<20, 64<<10)
	sock, _ := serve(t, mem, nbd.ExportOptions{Name: "e", Writable: true, MinBlock: 512, PrefBlock: 64 << 10, MaxBlock: 1 << 20})
	n, r := open(t, sock, "e", "", block.PermConsistentRead|block.PermWrite)
	if err := r.WriteAt(ctx, bytes.Repeat([]byte{7}, 128<<10), 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Zero(ctx, 2<<20, 64<<10, 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off, want int64
		data      bool
		zero      bool
	}{
		{0, 1 << 20, false, true},
		{1 << 20, 128 << 10, true, false},
		{2 << 20, 64 << 10, true, true}, // written zeroes: allocated
	} {
		e, err := r.Child().BlockStatus(ctx, tc.off, 4<<20-tc.off)
		if err != nil {
			t.Fatal(err)
		}
		if e.Len != tc.want || (e.Status&block.StatusData != 0) != tc.data || (e.Status&block.StatusZero != 0) != tc.zero {
			t.Errorf("status at %d: len %d status %b, want len %d data %v zero %v", tc.off, e.Len, e.Status, tc.want, tc.data, tc.zero)
		}
	}
	lim := n.Caps().Limits
	if lim.RequestAlign != 512 || lim.OptimalTransfer != 64<<10 || lim.MaxTransfer != 1<<20 {
		t.Errorf("limits %+v", lim)
	}
	// A read larger than the server's maximum is split by the generic
	// layer, and reads back what was written.
	p := make([]byte, 3<<20)
	if err := r.ReadAt(ctx, p, 0, 0); err != nil {
		t.Fatal(err)
	}
	if p[1<<20] != 7 || p[1<<20+128<<10] != 0 {
		t.Error("read back the wrong data")
	}
	if got, want := n.Filename(), "nbd+unix:///e?socket="+sock; got != want {
		t.Errorf("filename %q, want %q", got, want)
	}
}

// TestConcurrentRequests: requests from many goroutines are in flight on
// the one connection at once, and each gets its own reply.
func TestConcurrentRequests(t *testing.T) {
	ctx := context.Background()
	mem := nbdtest.NewMem(16<<20, 4096)
	gate := make(chan struct{})
	mem.Hook = func(ctx context.Context, op string, off, n int64) error {
		if op == "write" {
			// Hold the writes until several are waiting in the server.
			<-gate
		}
		return nil
	}
	sock, _ := serve(t, mem, nbd.ExportOptions{Name: "e", Writable: true})
	_, r := open(t, sock, "e", "", block.PermConsistentRead|block.PermWrite)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- r.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 64<<10), int64(i)<<20, block.FlagFUA)
		}()
	}
	for mem.MaxInFlight() < 4 {
		time.Sleep(time.Millisecond)
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		p := make([]byte, 64<<10)
		if err := r.ReadAt(ctx, p, int64(i)<<20, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, bytes.Repeat([]byte{byte(i + 1)}, 64<<10)) {
			t.Errorf("range %d read back wrong", i)
		}
	}
	before := mem.Flushes()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if mem.Flushes() != before+1 {
		t.Errorf("flush did not reach the server")
	}
}

// TestReadOnlyExport: a read-only export fails a read-write open unless
// auto-read-only is on, which makes the node read-only.
func TestReadOnlyExport(t *testing.T) {
	sock, _ := serve(t, nbdtest.NewMem(1<<20, 4096), nbd.ExportOptions{Name: "ro"})
	_, err := blocktest.TryOpen(blocktest.NewGraph(), nodeJSON(sock, "ro", ""))
	if err == nil || err.Error() != "Could not open image: Permission denied" {
		t.Errorf("read-write open of a read-only export: %v", err)
	}
	n := blocktest.Open(t, blocktest.NewGraph(), nodeJSON(sock, "ro", `,"auto-read-only":true`))
	if !n.ReadOnly() {
		t.Error("node is not read-only")
	}
}

// TestXDirtyBitmap: with x-dirty-bitmap naming one of blockd's exported
// bitmaps (the whole context name, as QEMU takes it), block status reads
// the bitmap: dirty ranges as holes, clean ones as data; a bitmap name
// alone is no context and fails the open.
func TestXDirtyBitmap(t *testing.T) {
	ctx := context.Background()
	bm := nbdtest.NewBitmap(4<<20, 64<<10)
	bm.Set(1<<20, 100<<10)
	sock, _ := serve(t, nbdtest.NewMem(4<<20, 4096), nbd.ExportOptions{Name: "e",
		Bitmaps: []nbd.ExportBitmap{{Name: "b0", Map: bm}}})
	_, r := open(t, sock, "e", `,"x-dirty-bitmap":"qemu:dirty-bitmap:b0","read-only":true`, block.PermConsistentRead)
	for _, tc := range []struct {
		off, want int64
		data      bool
	}{
		{0, 1 << 20, true},
		{1 << 20, 128 << 10, false},
		{1<<20 + 4096, 124 << 10, false},
		{1<<20 + 128<<10, 3<<20 - 128<<10, true},
	} {
		e, err := r.Child().BlockStatus(ctx, tc.off, 4<<20-tc.off)
		if err != nil {
			t.Fatal(err)
		}
		if e.Len != tc.want || (e.Status&block.StatusData != 0) != tc.data || e.Status&block.StatusZero != 0 {
			t.Errorf("status at %d: len %d status %b, want len %d data %v", tc.off, e.Len, e.Status, tc.want, tc.data)
		}
	}
	_, err := blocktest.TryOpen(blocktest.NewGraph(), nodeJSON(sock, "e", `,"x-dirty-bitmap":"b0","read-only":true`))
	if err == nil || err.Error() != "Could not open image: Invalid argument" {
		t.Errorf("x-dirty-bitmap without the context's namespace: %v", err)
	}
}

// TestOpenErrors: what a QMP client reads when the open fails.
func TestOpenErrors(t *testing.T) {
	sock, _ := serve(t, nbdtest.NewMem(1<<20, 4096), nbd.ExportOptions{Name: "e", Writable: true})
	missing := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct{ json, want string }{
		{nodeJSON(sock, "nope", ""), "Requested export not available"},
		{nodeJSON(missing, "e", ""), "Failed to connect to '" + missing + "': No such file or directory"},
		{nodeJSON(sock, "e", `,"tls-creds":"t0"`), "blockd does not support TLS for NBD yet"},
		{nodeJSON(sock, "e", `,"x-dirty-bitmap":"b0"`), "Could not open image: Invalid argument"},
		{`{"driver":"nbd","node-name":"dut","server":{"type":"unix"}}`, "Parameter 'server.path' is missing"},
		{`{"driver":"nbd","node-name":"dut","server":{"type":"unix","path":"x","host":"h"}}`, "Parameter 'server.host' is unexpected"},
		{`{"driver":"nbd","node-name":"dut","server":{"type":"fd","str":"3"}}`, "blockd's nbd driver does not support socket address type 'fd'"},
	} {
		_, err := blocktest.TryOpen(blocktest.NewGraph(), tc.json)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.json, err, tc.want)
		}
	}
}

// TestLostConnection: when the server goes away, requests fail with EIO
// and nothing hangs; a new server on the same socket is reconnected to by
// the next request.
func TestLostConnection(t *testing.T) {
	ctx := context.Background()
	mem := nbdtest.NewMem(1<<20, 4096)
	sock, srv := serve(t, mem, nbd.ExportOptions{Name: "e", Writable: true})
	_, r := open(t, sock, "e", "", block.PermConsistentRead|block.PermWrite)
	if err := r.WriteAt(ctx, []byte("hello"), 0, 0); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	p := make([]byte, 5)
	err := r.ReadAt(ctx, p, 0, 0)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read after the server went away: %v, want EIO", err)
	}
	// Same export behind a new server on the same path.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := nbd.NewServer(nbd.ServerOptions{})
	if _, err := srv2.AddExport(mem, nbd.ExportOptions{Name: "e", Writable: true}); err != nil {
		t.Fatal(err)
	}
	go srv2.Serve(l) //nolint:errcheck
	defer srv2.Close()
	if err := r.ReadAt(ctx, p, 0, 0); err != nil {
		t.Fatalf("read after reconnect: %v", err)
	}
	if string(p) != "hello" {
		t.Errorf("read %q", p)
	}
}
