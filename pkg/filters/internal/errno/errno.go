// Package errno turns errors into errno values and back, the way QEMU
// reports them: filters that fail a request with an errno (blkdebug) or
// report one in an event (quorum) use it so that the text a QMP client
// reads is strerror(3)'s ("Input/output error"), while errors.As still
// finds the syscall.Errno underneath.
package errno

import (
	"errors"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// Error is an errno whose message is the C library's sentence.
type Error struct{ Errno syscall.Errno }

// New returns an error for e whose Error() is Strerror(e).
func New(e syscall.Errno) error { return &Error{Errno: e} }

func (e *Error) Error() string { return Strerror(e.Errno) }

// Unwrap lets errors.As and errors.Is find the syscall.Errno.
func (e *Error) Unwrap() error { return e.Errno }

// Strerror is the glibc text of e: Go's text with a capital first letter
// ("input/output error" -> "Input/output error").
func Strerror(e syscall.Errno) string { return block.Strerror(e) }

// Of classifies err as an errno, as the NBD server does: a syscall.Errno
// in the chain wins; then the block sentinels; everything else is EIO.
func Of(err error) syscall.Errno {
	var e syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.As(err, &e):
		return e
	case errors.Is(err, block.ErrNotSupported):
		return syscall.ENOTSUP
	case errors.Is(err, block.ErrReadOnly):
		return syscall.EPERM
	case errors.Is(err, block.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, block.ErrOutOfRange), errors.Is(err, block.ErrInvalid):
		return syscall.EINVAL
	}
	return syscall.EIO
}
