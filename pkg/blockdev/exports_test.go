package blockdev

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestHoldNBDServing: a server started while serving is held accepts the
// connection but sends no handshake until release; stopped while held,
// it ends without ever serving.
func TestHoldNBDServing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		release  bool // else nbd-server-stop while held
		greeting bool
	}{
		{"released", true, true},
		{"stopped while held", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(nil)
			defer s.Shutdown(context.Background())
			release := s.HoldNBDServing()
			sock := t.TempDir() + "/nbd.sock"
			start, _ := json.Marshal(map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
			if err := s.Execute(context.Background(), "nbd-server-start", start); err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := r.ReadByte(); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("handshake while held: %v", err)
			}
			if tc.release {
				release()
			} else if err := s.Execute(context.Background(), "nbd-server-stop", nil); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			magic := make([]byte, 8)
			_, err = io.ReadFull(r, magic)
			if got := err == nil && string(magic) == "NBDMAGIC"; got != tc.greeting {
				t.Fatalf("after the hold: %q, %v; want greeting %v", magic, err, tc.greeting)
			}
		})
	}
}
