package block

import (
	"errors"
	"syscall"
)

// errnoError is an errno whose message is the C library's sentence.
type errnoError struct{ errno syscall.Errno }

// ErrnoError returns an error for e whose Error() is Strerror(e)
// ("Input/output error", as QEMU words it) and which errors.As and
// errors.Is still see as e. Drivers that fail a request with a chosen
// errno (blkdebug) or vote on one (quorum) return it, so that what a QMP
// client reads matches qsd.
func ErrnoError(e syscall.Errno) error { return &errnoError{errno: e} }

func (e *errnoError) Error() string { return Strerror(e.errno) }

// Unwrap lets errors.As and errors.Is find the syscall.Errno.
func (e *errnoError) Unwrap() error { return e.errno }

// ErrnoOf classifies err as an errno: a syscall.Errno in the chain wins;
// then the sentinels (ErrNotSupported: ENOTSUP, ErrReadOnly: EPERM,
// ErrNoSpace: ENOSPC, ErrOutOfRange and ErrInvalid: EINVAL); everything
// else is EIO. ErrnoOf(nil) is 0.
//
// pkg/nbd keeps its own mapping, to NBD's smaller set of error values.
func ErrnoOf(err error) syscall.Errno {
	var e syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.As(err, &e):
		return e
	case errors.Is(err, ErrNotSupported):
		return syscall.ENOTSUP
	case errors.Is(err, ErrReadOnly):
		return syscall.EPERM
	case errors.Is(err, ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, ErrOutOfRange), errors.Is(err, ErrInvalid):
		return syscall.EINVAL
	}
	return syscall.EIO
}
