package block_test

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

func TestErrno(t *testing.T) {
	err := block.ErrnoError(syscall.ENOSPC)
	// compat(qsd-7.2): strerror's sentence, as qsd words injected errors.
	if err.Error() != "No space left on device" || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("block.ErrnoError(ENOSPC) = %q", err)
	}
	tests := []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{fmt.Errorf("x: %w", block.ErrnoError(syscall.ENODATA)), syscall.ENODATA},
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, syscall.ENOENT},
		{fmt.Errorf("x: %w", block.ErrNotSupported), syscall.ENOTSUP},
		{block.Errorf(block.ErrReadOnly, "Block node 'x' is read-only"), syscall.EPERM},
		{block.ErrNoSpace, syscall.ENOSPC},
		{block.ErrOutOfRange, syscall.EINVAL},
		{block.ErrInvalid, syscall.EINVAL},
		{block.ErrCorrupt, syscall.EIO},
		{errors.New("anything"), syscall.EIO},
	}
	for _, tt := range tests {
		if got := block.ErrnoOf(tt.err); got != tt.want {
			t.Errorf("block.ErrnoOf(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
