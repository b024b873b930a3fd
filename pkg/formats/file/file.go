// Package file is the "file" protocol driver: a regular file (or block
// device) accessed with pread/pwrite, fallocate for write-zeroes and
// discard, SEEK_DATA/SEEK_HOLE for block status, optional O_DIRECT, and
// QEMU-compatible image locking.
package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsFile's own members.
type Options struct {
	Filename        string     `json:"filename"`
	PRManager       string     `json:"pr-manager,omitempty"`
	Locking         *OnOffAuto `json:"locking,omitempty"`
	AIO             *AIOMode   `json:"aio,omitempty"`
	AIOMaxBatch     *int64     `json:"aio-max-batch,omitempty"`
	DropCache       *bool      `json:"drop-cache,omitempty"`
	XCheckDropCache *bool      `json:"x-check-cache-dropped,omitempty"`
}

// OnOffAuto is QMP's OnOffAuto.
type OnOffAuto string

// EnumValues implements qmp.Enum.
func (OnOffAuto) EnumValues() []string { return []string{"auto", "on", "off"} }

// AIOMode is BlockdevAioOptions; blockd uses goroutines whichever is given.
type AIOMode string

// EnumValues implements qmp.Enum.
func (AIOMode) EnumValues() []string { return []string{"threads", "native", "io_uring"} }

type file struct {
	name     string
	f        *os.File
	fd       int
	direct   bool
	writable bool // opened read-write
	align    int64
	noFlush  bool
	locking  bool

	// writeBehind counts the users that turned write-behind on
	// (block.WriteBehinder): while it is positive, large writes start
	// their own write-back.
	writeBehind atomic.Int32
	// noNoWait: the file system refused RWF_NOWAIT once; reads that must
	// not block are not tried again.
	noNoWait atomic.Bool

	mu           sync.Mutex // guards the lock state
	perm, shared block.Perm
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	common := o.Common()
	if opts.AIO != nil && *opts.AIO == "native" && !common.Direct() {
		// compat(qsd-7.2): Linux AIO needs O_DIRECT; blockd keeps the rule
		// so that configurations behave the same on both daemons.
		return nil, errors.New("aio=native was specified, but it requires cache.direct=on, which was not specified.")
	}
	flags := os.O_RDWR
	if o.ReadOnly() {
		flags = os.O_RDONLY
	}
	if common.Direct() {
		flags |= syscall.O_DIRECT
	}
	// O_NONBLOCK: opening a FIFO (a hostile image can name one as its
	// backing file) would otherwise block until someone writes to it; it
	// is refused below instead. Fd() makes the descriptor blocking again.
	flags |= syscall.O_NONBLOCK
	f, err := os.OpenFile(opts.Filename, flags|syscall.O_CLOEXEC, 0)
	if err != nil && !o.ReadOnly() && common.AutoReadOnly != nil && *common.AutoReadOnly &&
		(errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EPERM)) {
		f, err = os.OpenFile(opts.Filename, (flags&^os.O_RDWR)|os.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err == nil {
			o.SetReadOnly(true)
		}
	}
	if err != nil {
		return nil, block.Errorf(errClass(err), "Could not open '%s': %s", opts.Filename, block.Strerror(err))
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("Could not stat '%s': %s", opts.Filename, block.Strerror(err))
	}
	if st.IsDir() {
		f.Close()
		return nil, block.Errorf(block.ErrInvalid, "Could not open '%s': %s", opts.Filename, block.Strerror(syscall.EISDIR))
	}
	if m := st.Mode(); m&(os.ModeNamedPipe|os.ModeSocket|os.ModeIrregular) != 0 {
		f.Close()
		// compat(qsd-7.2): file-posix's wording (qsd itself hangs in open
		// on a FIFO).
		return nil, block.Errorf(block.ErrInvalid, "'file' driver requires '%s' to be either a regular file or a block device", opts.Filename)
	}
	d := &file{
		name:     opts.Filename,
		f:        f,
		fd:       int(f.Fd()),
		direct:   common.Direct(),
		writable: flags&os.O_RDWR != 0 && !o.ReadOnly(),
		align:    1,
		noFlush:  common.NoFlush(),
		locking:  opts.Locking == nil || *opts.Locking != "off",
		shared:   block.PermAll,
	}
	if d.direct {
		d.align = probeAlign(d.fd)
	}
	return d, nil
}

// probeAlign finds the smallest request alignment O_DIRECT accepts.
func probeAlign(fd int) int64 {
	buf := alignedBuf(4096)
	for _, a := range []int{512, 1024, 2048, 4096} {
		if _, err := unix.Pread(fd, buf[:a], 0); err == nil || !errors.Is(err, syscall.EINVAL) {
			return int64(a)
		}
	}
	return 4096
}

func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := 0
	if r := int(uintptrOf(b) % 4096); r != 0 {
		off = 4096 - r
	}
	return b[off : off+n : off+n]
}

func errClass(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return block.ErrNotFound
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return block.ErrReadOnly
	}
	return block.ErrInvalid
}

func (d *file) Caps() block.Caps {
	return block.Caps{
		Zero:        true,
		Discard:     true,
		BlockStatus: true,
		Limits:      block.Limits{RequestAlign: d.align},
	}
}

func (d *file) Size(ctx context.Context) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return 0, ioErr("stat", d.name, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		size, err := unix.Seek(d.fd, 0, 2)
		if err != nil {
			return 0, ioErr("seek", d.name, err)
		}
		return size, nil
	}
	return st.Size, nil
}

func ioErr(op, name string, err error) error {
	return fmt.Errorf("%s '%s': %w", op, name, err)
}

// bounce returns a buffer for O_DIRECT when p is not aligned in memory.
func (d *file) needsBounce(p []byte) bool {
	return d.direct && uintptrOf(p)%uintptr(d.align) != 0
}

func (d *file) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	if d.needsBounce(p) {
		b := alignedBuf(len(p))
		if err := d.pread(b, off); err != nil {
			return err
		}
		copy(p, b)
		return nil
	}
	return d.pread(p, off)
}

// pread reads all of p; the part past the end of the file reads as zeroes.
func (d *file) pread(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(d.fd, p, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return ioErr("read", d.name, err)
		}
		if n == 0 {
			clear(p)
			return nil
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

func (d *file) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	size := len(p)
	if d.needsBounce(p) {
		b := alignedBuf(len(p))
		copy(b, p)
		p = b
	}
	for len(p) > 0 {
		n, err := unix.Pwrite(d.fd, p, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return ioErr("write", d.name, err)
		}
		p = p[n:]
		off += int64(n)
	}
	if f&block.FlagFUA != 0 {
		return d.Flush(ctx)
	}
	d.startWriteBack(off-int64(size), int64(size))
	return nil
}

// writeBehindMin is the smallest write that starts its own write-back:
// metadata updates are left to the flush.
const writeBehindMin = 64 << 10

// WriteBehind implements block.WriteBehinder. It changes nothing where
// the page cache is bypassed (cache.direct) or flushes are ignored
// (cache.no-flush: nobody asked for the data on disk).
func (d *file) WriteBehind(on bool) {
	if on {
		d.writeBehind.Add(1)
	} else {
		d.writeBehind.Add(-1)
	}
}

// startWriteBack asks the kernel to begin writing [off, off+n) to the
// disk without waiting for it, when write-behind is on. A failure is
// only a lost hint: the flush that follows reports real errors.
func (d *file) startWriteBack(off, n int64) {
	if n < writeBehindMin || d.direct || d.noFlush || d.writeBehind.Load() <= 0 {
		return
	}
	_ = unix.SyncFileRange(d.fd, off, n, unix.SYNC_FILE_RANGE_WRITE)
}

func (d *file) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE)
	if f&block.FlagMayUnmap != 0 {
		size, err := d.Size(ctx)
		if err == nil && off+n <= size {
			mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		}
	}
	err := unix.Fallocate(d.fd, mode, off, n)
	if err == nil {
		return nil
	}
	if mode != unix.FALLOC_FL_ZERO_RANGE {
		if err = unix.Fallocate(d.fd, unix.FALLOC_FL_ZERO_RANGE, off, n); err == nil {
			return nil
		}
	}
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EINVAL) {
		return block.ErrNotSupported
	}
	return ioErr("write zeroes", d.name, err)
}

func (d *file) Discard(ctx context.Context, off, n int64) error {
	err := unix.Fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return nil
	}
	if err != nil {
		return ioErr("discard", d.name, err)
	}
	return nil
}

func (d *file) Flush(ctx context.Context) error {
	if d.noFlush {
		return nil
	}
	if err := unix.Fdatasync(d.fd); err != nil {
		return ioErr("flush", d.name, err)
	}
	return nil
}

// BlockStatus asks the file system where data and holes are. Holes read
// as zeroes; everything in a file is allocated at this layer.
func (d *file) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	data, err := unix.Seek(d.fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, syscall.ENXIO):
		// No data from off to the end of the file: all hole.
		return block.Extent{Len: n, Status: block.StatusZero | block.StatusAllocated | block.StatusOffsetValid, Offset: off}, nil
	case err != nil:
		// The file system cannot tell: say data.
		return block.Extent{Len: n, Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: off}, nil
	case data > off:
		return block.Extent{Len: min(n, data-off), Status: block.StatusZero | block.StatusAllocated | block.StatusOffsetValid, Offset: off}, nil
	}
	hole, err := unix.Seek(d.fd, off, unix.SEEK_HOLE)
	if err != nil || hole <= off {
		return block.Extent{Len: n, Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: off}, nil
	}
	return block.Extent{Len: min(n, hole-off), Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: off}, nil
}

// Truncate sets a regular file's length; exact does not matter for files
// (it does for block devices, which blockd opens as plain files too and
// cannot resize).
func (d *file) Truncate(ctx context.Context, size int64, exact bool) error {
	if err := unix.Ftruncate(d.fd, size); err != nil {
		return ioErr("truncate", d.name, err)
	}
	return nil
}

func (d *file) Close() error { return d.f.Close() }

// Filename implements block.Filenamer.
func (d *file) Filename() string { return d.name }

// AllocatedSize implements block.AllocatedSizer.
func (d *file) AllocatedSize() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// CheckPerm implements block.PermChecker with image locks.
func (d *file) CheckPerm(perm, shared block.Perm) error {
	if !d.locking {
		return nil
	}
	return checkLocks(d.fd, perm, shared)
}

// SetPerm implements block.PermChecker.
func (d *file) SetPerm(perm, shared block.Perm) {
	if !d.locking {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.perm, d.shared = perm, shared
	if err := applyLocks(d.fd, perm, shared); err != nil {
		// CheckPerm just said the bytes were free; losing a race here
		// leaves the image less protected, not corrupt.
		_ = err
	}
}

// ImageInfo implements block.Infoer: a file has no dirty flag of its own,
// and qsd reports it as clean.
func (d *file) ImageInfo(ctx context.Context) block.ImageInfo {
	clean := false
	return block.ImageInfo{DirtyFlag: &clean}
}

// DriverStats implements block.DriverStatser with qsd's file statistics.
func (d *file) DriverStats(st *block.Stats) map[string]any {
	return map[string]any{
		"driver":            "file",
		"discard-nb-ok":     st.DiscardNbOK.Load(),
		"discard-nb-failed": st.DiscardNbFailed.Load(),
		"discard-bytes-ok":  st.DiscardBytesOK.Load(),
	}
}
