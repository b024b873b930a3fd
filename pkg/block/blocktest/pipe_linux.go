package blocktest

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// Pipe returns a pipe of 1 MiB for tests of block.Splicer: its read end
// as a file and its write end as the descriptor SpliceRead takes. Both
// are closed when the test ends.
func Pipe(t testing.TB) (r *os.File, w int) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r, w = os.NewFile(uintptr(fds[0]), "pipe"), fds[1]
	t.Cleanup(func() {
		r.Close()
		unix.Close(w)
	})
	if _, err := unix.FcntlInt(uintptr(w), unix.F_SETPIPE_SZ, 1<<20); err != nil {
		t.Fatal(err)
	}
	return r, w
}
