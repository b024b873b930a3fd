package main

import (
	"syscall"
	"testing"
	"time"
)

// TestStdioConnClose: Close ends a read in progress (however it races
// the read) and leaves both files blocking again, as they came.
func TestStdioConnClose(t *testing.T) {
	for i := 0; i < 200; i++ {
		var in, out [2]int
		if err := syscall.Pipe(in[:]); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Pipe(out[:]); err != nil {
			t.Fatal(err)
		}
		// The test's own views of the two open files, to see their mode.
		inView, _ := syscall.Dup(in[0])
		outView, _ := syscall.Dup(out[1])
		c := newFDConn(in[0], out[1])
		read := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 64))
			read <- err
		}()
		closed := make(chan struct{})
		go func() { c.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close waits for the client", i)
		}
		if err := <-read; err == nil {
			t.Fatalf("round %d: read after Close succeeded", i)
		}
		c.Close() // a second Close closes nothing else
		for _, fd := range []int{inView, outView} {
			fl, err := fcntlGetfl(fd)
			if err != nil || fl&syscall.O_NONBLOCK != 0 {
				t.Fatalf("round %d: fd %d left non-blocking (flags %#x, %v)", i, fd, fl, err)
			}
		}
		for _, fd := range []int{inView, outView, in[1], out[0]} {
			syscall.Close(fd)
		}
	}
}

func fcntlGetfl(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFL, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
