//go:build linux

package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// pipeMem is a Mem that also serves ReadToPipe, by writing its bytes into
// the pipe, so the server's splice path runs without a file. mode makes
// it misbehave: "short" moves half and stops, "fail" moves some and
// fails, "unsupported" moves nothing and says so.
type pipeMem struct {
	*nbdtest.Mem
	mode  string
	calls atomic.Int64
}

func (m *pipeMem) ReadToPipe(ctx context.Context, pipe int, off int64, n int) (int, error) {
	m.calls.Add(1)
	if m.mode == "unsupported" {
		return 0, nbd.ErrNotSupported
	}
	p := make([]byte, n)
	if err := m.ReadAt(ctx, p, off); err != nil {
		return 0, err
	}
	if m.mode == "short" || m.mode == "fail" {
		p = p[:n/2]
	}
	k, err := unix.Write(pipe, p)
	if err == nil && m.mode == "fail" {
		err = errors.New("injected failure")
	}
	return k, err
}

// TestSpliceReplies checks that read replies assembled in a pipe carry
// the same bytes and chunks as the buffer path, for simple and structured
// replies, with holes and without, and that a backend whose splice fails
// falls back to ReadAt with nothing of the failed attempt reaching the
// client.
func TestSpliceReplies(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	ctx := context.Background()
	mem := nbdtest.NewMem(4*MiB, 4096)
	data := make([]byte, 4*MiB)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	mem.WriteAt(ctx, data, 0, false)
	mem.Zero(ctx, MiB+64<<10, 128<<10, true, false, false) // a hole inside the second MiB

	cases := []struct {
		name       string
		mode       string
		structured bool
		flags      uint16
		off        uint64
		length     uint32
		chunks     int // structured: chunks expected (0: simple reply)
		holes      int
		spliced    bool // the pipe path answered
	}{
		{"simple", "", false, 0, 4096, 256 << 10, 0, 0, true},
		{"structured data", "", true, 0, 0, 512 << 10, 1, 0, true},
		{"structured with a hole", "", true, 0, MiB, 512 << 10, 3, 1, true},
		{"DF over a hole", "", true, flagDF, MiB, 512 << 10, 1, 0, true},
		{"small read keeps the buffer path", "", true, 0, 0, 16 << 10, 1, 0, false},
		{"larger than the pipe", "", true, 0, 0, 2 * MiB, 3, 1, false},
		{"short splice falls back", "short", true, 0, 0, 256 << 10, 1, 0, false},
		{"failed splice falls back", "fail", false, 0, 0, 256 << 10, 0, 0, false},
		{"unsupported splice falls back", "unsupported", true, 0, MiB, 512 << 10, 3, 1, false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := &pipeMem{Mem: mem, mode: tc.mode}
			name := string(rune('a' + i))
			addExport(t, s, b, nbd.ExportOptions{Name: name, SparseReadMin: 4096})
			c, _ := s.connect(t, name, tc.structured)
			before := nbd.SplicedReplies()
			// Twice: the second reply reuses the first one's pipe.
			for round := 0; round < 2; round++ {
				res := c.roundTrip(cmdRead, tc.flags, tc.off, tc.length, nil)
				if res.errno != 0 {
					t.Fatalf("errno %d %s", res.errno, res.msg)
				}
				if !bytes.Equal(res.data, mem.Bytes()[tc.off:tc.off+uint64(tc.length)]) {
					t.Fatalf("round %d: data differs", round)
				}
				if tc.structured && (res.chunks != tc.chunks || res.holes != tc.holes) {
					t.Errorf("round %d: %d chunks %d holes, want %d and %d", round, res.chunks, res.holes, tc.chunks, tc.holes)
				}
			}
			if got := nbd.SplicedReplies() - before; (got > 0) != tc.spliced {
				t.Errorf("%d replies went through a pipe, want spliced=%v (ReadToPipe called %d times)", got, tc.spliced, b.calls.Load())
			}
			// The connection is still in sync: a small read after.
			if res := c.roundTrip(cmdRead, 0, 0, 4096, nil); res.errno != 0 || !bytes.Equal(res.data, data[:4096]) {
				t.Fatalf("read after: errno %d", res.errno)
			}
		})
	}
}
