package chardev

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitFor polls cond: a peer's connect or close reaches the socket's
// goroutine with no event to wait on.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(5 * time.Millisecond)
	}
}

// TestSocketWithoutFrontend: one client at a time, the filename follows
// it, and closing removes the socket file.
func TestSocketWithoutFrontend(t *testing.T) {
	r := New()
	path := filepath.Join(t.TempDir(), "s.sock")
	a := &AddArgs{ID: "s", Backend: Backend{Type: "socket", Options: &SocketOptions{
		Addr: SocketAddressLegacy{Type: "unix", Unix: &UnixSocketAddress{Path: path}}}}}
	if _, err := r.chardevAdd(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	d := r.Get("s")
	if got := d.Filename(); got != "disconnected:unix:"+path+",server=on" {
		t.Errorf("filename %q", got)
	}
	c1, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first client", func() bool { return d.Filename() == "unix:"+path+",server=on" })
	c2, err := net.Dial("unix", path) // waits in the backlog
	if err != nil {
		t.Fatal(err)
	}
	c1.Write([]byte("dropped"))
	c1.Close()
	c2.Close()
	waitFor(t, "both clients to go", func() bool { return d.Filename() == "disconnected:unix:"+path+",server=on" })
	if _, err := r.chardevRemove(context.Background(), &IDArgs{ID: "s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket file after remove: %v", err)
	}
}

// TestAttachedSocketIsBusy: a monitor's chardev is busy and reports the
// monitor's connections.
func TestAttachedSocketIsBusy(t *testing.T) {
	r := New()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AddListener("m", l); err != nil {
		t.Fatal(err)
	}
	ml, err := r.Get("m").Attach()
	if err != nil {
		t.Fatal(err)
	}
	r.Start() // leaves the attached socket to its monitor
	if _, err := r.chardevRemove(context.Background(), &IDArgs{ID: "m"}); err == nil || err.Error() != "Chardev 'm' is busy" {
		t.Errorf("remove of a monitor's chardev: %v", err)
	}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ml.Accept()
	if err != nil {
		t.Fatal(err)
	}
	want := "tcp:" + l.Addr().String() + ",server=on <-> " + c.LocalAddr().String()
	if got := r.Get("m").Filename(); got != want {
		t.Errorf("filename %q, want %q", got, want)
	}
	sc.Close()
	if got := r.Get("m").Filename(); got != "disconnected:tcp:"+l.Addr().String()+",server=on" {
		t.Errorf("filename after the monitor closed its client: %q", got)
	}
	r.Close()
}

// TestConnectedWhenAddReturns: a server with wait=on, and a client, are
// connected as soon as chardev-add returns, with no wait for the
// socket's goroutine.
func TestConnectedWhenAddReturns(t *testing.T) {
	yes := true
	for _, server := range []bool{true, false} {
		r := New()
		path := filepath.Join(t.TempDir(), "s.sock")
		addr := SocketAddressLegacy{Type: "unix", Unix: &UnixSocketAddress{Path: path}}
		o := &SocketOptions{Addr: addr, Server: &server}
		if server {
			o.Wait = &yes
			go func() {
				for i := 0; i < 500; i++ {
					if c, err := net.Dial("unix", path); err == nil {
						defer c.Close()
						<-time.After(time.Second)
						return
					}
					<-time.After(10 * time.Millisecond)
				}
			}()
		} else {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
		}
		if _, err := r.chardevAdd(context.Background(), &AddArgs{ID: "s", Backend: Backend{Type: "socket", Options: o}}); err != nil {
			t.Fatal(err)
		}
		if got := r.Get("s").Filename(); strings.HasPrefix(got, "disconnected") || !strings.HasPrefix(got, "unix:") {
			t.Errorf("server=%v: filename once chardev-add returned: %q", server, got)
		}
		r.Close()
	}
}
