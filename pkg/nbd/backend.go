package nbd

import (
	"context"
	"errors"
	"syscall"
)

// Backend is what an export serves.
//
// Methods may be called concurrently from several goroutines. A buffer p
// passed to ReadAt or WriteAt is valid only for the duration of the call and
// must not be retained. Ranges are always inside [0, Size()) when the server
// calls a method; the server checks them first.
//
// Errors are reported to the client per request, as an NBD errno (see
// ErrnoOf); they never close the connection.
type Backend interface {
	// Size is the size of the export in bytes.
	Size() int64
	// ReadAt fills p with the bytes at off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off; with fua the data is on stable storage when
	// it returns.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Zero makes [off, off+n) read as zeroes. With mayTrim the backend may
	// deallocate the range. With fast, it must fail quickly with an error
	// wrapping ErrNotSupported (or syscall.ENOTSUP) instead of falling back
	// to writing zero buffers.
	Zero(ctx context.Context, off, n int64, mayTrim, fua, fast bool) error
	// Trim discards [off, off+n); contents afterwards are unspecified.
	Trim(ctx context.Context, off, n int64, fua bool) error
	// Flush makes every completed write stable.
	Flush(ctx context.Context) error
	// Cache is a hint that [off, off+n) will be accessed soon.
	Cache(ctx context.Context, off, n int64) error
	// BlockStatus describes [off, off+n) from off onward, as consecutive
	// extents. It may describe less than n (at least 1 byte) but never more.
	BlockStatus(ctx context.Context, off, n int64) ([]Extent, error)
}

// A PipeReader is a Backend that can move a range of the export into a
// pipe without copying it through memory (splice(2) from the page cache).
// The server then sends large read replies from the pipe, and the
// payload never passes through its buffers.
type PipeReader interface {
	// ReadToPipe moves exactly n bytes at off into the pipe whose write
	// end is the file descriptor pipe; the pipe has room for them. It
	// returns how many bytes it moved. On an error or a short count the
	// server discards the pipe and reads the range with ReadAt, which
	// reports any error to the client.
	ReadToPipe(ctx context.Context, pipe int, off int64, n int) (int, error)
}

// A NoWaitReader is a Backend that can try a read that must not wait
// (data in the page cache). The server's reader answers small reads with
// it on the spot and hands reads that would wait to its workers.
type NoWaitReader interface {
	// ReadNoWait fills p from off if it can without waiting for I/O, and
	// returns an error wrapping ErrWouldBlock if it cannot.
	ReadNoWait(ctx context.Context, p []byte, off int64) error
}

// ErrWouldBlock is wrapped by NoWaitReader.ReadNoWait when the read
// would have to wait.
var ErrWouldBlock = errors.New("operation would block")

// Extent is one run of the block status answer.
type Extent struct {
	Length int64
	// Hole and Zero are the base:allocation flags: Hole means not
	// allocated, Zero means the range reads as zeroes.
	Hole, Zero bool
	// Depth is the qemu:allocation-depth value: 0 unallocated in the
	// whole chain, 1 allocated in this node, 2 and up in a backing layer.
	Depth int
}

// A DirtyMap is a dirty bitmap as an export serves it: which ranges of
// the export changed since the bitmap was started. Its offsets are the
// export's. It is read while requests run, from several goroutines at
// once, and must be safe for that; it is not reached through the
// export's gate, so it must not depend on the backend.
type DirtyMap interface {
	// NextDirtyIn returns the first dirty range inside [from, end): it
	// starts at from or later and ends at the first clean byte after it
	// or at end. n is 0 when [from, end) is clean.
	NextDirtyIn(from, end int64) (off, n int64)
}

// ExportBitmap is a dirty bitmap an export offers as the metadata
// context "qemu:dirty-bitmap:" + Name (qsd's block-export-add bitmaps).
type ExportBitmap struct {
	Name string
	Map  DirtyMap
}

// ErrNotSupported is the sentinel a backend wraps when it cannot do an
// operation (a fast zero that would be slow, a missing block status). It is
// sent to the client as ENOTSUP where the protocol allows that.
var ErrNotSupported = errors.New("operation not supported")

// Errno values of the NBD protocol, exported as syscall.Errno for callers
// that want to compare with the result of ErrnoOf.
const (
	EPERM     = syscall.Errno(errnoPerm)
	EIO       = syscall.Errno(errnoIO)
	ENOMEM    = syscall.Errno(errnoNoMem)
	EINVAL    = syscall.Errno(errnoInval)
	ENOSPC    = syscall.Errno(errnoNoSpc)
	EOVERFLOW = syscall.Errno(errnoOverflow)
	ENOTSUP   = syscall.Errno(errnoNotSup)
	ESHUTDOWN = syscall.Errno(errnoShutdown)
)

// ErrnoOf maps a backend error to the NBD error value sent to the client:
// a syscall.Errno found with errors.As maps to the matching NBD error
// (EROFS to EPERM; EACCES to EINVAL, as qsd 7.2 sends it; EDQUOT and
// EFBIG to ENOSPC; EOPNOTSUPP to ENOTSUP), ErrNotSupported to ENOTSUP, a cancelled context to ESHUTDOWN,
// anything else to EIO. ErrnoOf(nil) is 0.
func ErrnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EPERM, syscall.EROFS:
			return EPERM
		case syscall.EIO:
			return EIO
		case syscall.ENOMEM:
			return ENOMEM
		case syscall.EINVAL, syscall.EACCES:
			return EINVAL
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EOVERFLOW:
			return EOVERFLOW
		case syscall.ENOTSUP: // same value as EOPNOTSUPP on Linux
			return ENOTSUP
		case syscall.ESHUTDOWN:
			return ESHUTDOWN
		}
		return EIO
	}
	switch {
	case errors.Is(err, ErrNotSupported):
		return ENOTSUP
	case errors.Is(err, context.Canceled):
		return ESHUTDOWN
	}
	return EIO
}

func isNotSupported(err error) bool {
	return err != nil && ErrnoOf(err) == ENOTSUP
}
