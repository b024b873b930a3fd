package fuse

import (
	"context"
	"sync"
	"syscall"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
)

// Backend is the node an export serves, through the export's root. The
// method set is a superset of what pkg/nbd asks for, so one adapter in
// pkg/blockdev serves both exports.
type Backend interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off; fua asks for it to be durable on return.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Zero makes [off, off+n) read as zeroes; mayTrim lets it deallocate,
	// fast makes it fail with block.ErrNotSupported instead of writing
	// zeroes the slow way.
	Zero(ctx context.Context, off, n int64, mayTrim, fua, fast bool) error
	// Trim discards [off, off+n): the node may drop the data, or not.
	Trim(ctx context.Context, off, n int64, fua bool) error
	Flush(ctx context.Context) error
	// Truncate resizes the node; new space reads as zeroes.
	Truncate(ctx context.Context, size int64) error
	// AllocatedSize is what the node takes on its storage, <= 0 if unknown.
	AllocatedSize() int64
	// RequestAlign is the node's request alignment (st_blksize).
	RequestAlign() int64
	// DataAt tells whether reads at off come from stored data, and for
	// how many bytes from off (at least one) that holds.
	DataAt(ctx context.Context, off int64) (data bool, n int64, err error)
}

// rootIno is the inode of the mounted file, the only one there is.
const rootIno = 1

// maxRequest bounds one read or write: the largest request the kernel
// sends us (go-fuse's MaxWrite and our max_read mount option).
const maxRequest = 1 << 20

// attrTimeout is how long the kernel may cache the file's attributes
// (qsd 7.2 answers with one second).
const attrTimeout = time.Second

// fileSystem answers the kernel's requests for one export. go-fuse calls
// it from several goroutines at once.
type fileSystem struct {
	gofuse.RawFileSystem // ENOSYS for everything not below

	b          Backend
	writable   bool
	growable   bool
	allowOther bool

	// gate admits requests while the export is open: each request holds
	// it shared, Close takes it exclusively and then marks the export
	// closed, so no request touches the backend after Close returns.
	gate   sync.RWMutex
	closed bool // guarded by gate

	mu   sync.Mutex
	mode uint32 // file mode bits without the type; guarded by mu
	uid  uint32 // guarded by mu
	gid  uint32 // guarded by mu
}

func newFileSystem(b Backend, writable, growable bool) *fileSystem {
	fs := &fileSystem{
		RawFileSystem: gofuse.NewDefaultRawFileSystem(),
		b:             b, writable: writable, growable: growable,
		mode: 0o400,
		uid:  uint32(syscall.Getuid()),
		gid:  uint32(syscall.Getgid()),
	}
	if writable {
		fs.mode |= 0o200
	}
	return fs
}

func (fs *fileSystem) String() string { return "blockd" }

// enter admits a request, or says ENOTCONN once the export is closed.
func (fs *fileSystem) enter() bool {
	fs.gate.RLock()
	if fs.closed {
		fs.gate.RUnlock()
		return false
	}
	return true
}

func (fs *fileSystem) exit() { fs.gate.RUnlock() }

// close waits for the requests in flight and refuses new ones.
func (fs *fileSystem) close() {
	fs.gate.Lock()
	fs.closed = true
	fs.gate.Unlock()
}

// status is the FUSE answer for a backend error.
func status(err error) gofuse.Status {
	return gofuse.Status(block.ErrnoOf(err))
}

func (fs *fileSystem) Lookup(cancel <-chan struct{}, h *gofuse.InHeader, name string, out *gofuse.EntryOut) gofuse.Status {
	// The mount is a single file: there is nothing to look up in it.
	return gofuse.ENOENT
}

func (fs *fileSystem) Forget(nodeid, nlookup uint64) {}

func (fs *fileSystem) GetAttr(cancel <-chan struct{}, in *gofuse.GetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	if !fs.enter() {
		return gofuse.Status(syscall.ENOTCONN)
	}
	defer fs.exit()
	fs.attr(in.NodeId, out)
	return gofuse.OK
}

// attr fills out with the file's attributes now.
func (fs *fileSystem) attr(ino uint64, out *gofuse.AttrOut) {
	size := fs.b.Size()
	blocks := fs.b.AllocatedSize()
	if blocks <= 0 {
		blocks = size
	}
	now := time.Now()
	fs.mu.Lock()
	out.Attr = gofuse.Attr{
		Ino:     ino,
		Size:    uint64(size),
		Blocks:  uint64((blocks + 511) / 512),
		Mode:    syscall.S_IFREG | fs.mode,
		Nlink:   1,
		Owner:   gofuse.Owner{Uid: fs.uid, Gid: fs.gid},
		Blksize: uint32(max(fs.b.RequestAlign(), 1)),
	}
	fs.mu.Unlock()
	out.SetTimes(&now, &now, &now)
	out.SetTimeout(attrTimeout)
}

// setattrIgnored are SETATTR bits that say how the request was made, not
// what to change.
const setattrIgnored = gofuse.FATTR_FH | gofuse.FATTR_LOCKOWNER

func (fs *fileSystem) SetAttr(cancel <-chan struct{}, in *gofuse.SetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	if !fs.enter() {
		return gofuse.Status(syscall.ENOTCONN)
	}
	defer fs.exit()
	valid := in.Valid &^ setattrIgnored
	supported := uint32(gofuse.FATTR_SIZE | gofuse.FATTR_MODE)
	if fs.allowOther {
		supported |= gofuse.FATTR_UID | gofuse.FATTR_GID
	}
	if valid&^supported != 0 {
		return gofuse.ENOTSUP
	}
	if valid&gofuse.FATTR_MODE != 0 {
		// Without allow_other nobody but the owner can reach the file:
		// granting others access would be a lie.
		if !fs.allowOther && in.Mode&0o077 != 0 {
			return gofuse.EPERM
		}
		if !fs.writable && in.Mode&0o222 != 0 {
			return gofuse.EROFS
		}
	}
	if valid&gofuse.FATTR_SIZE != 0 {
		if !fs.writable {
			return gofuse.EACCES
		}
		if err := fs.b.Truncate(context.Background(), int64(in.Size)); err != nil {
			return status(err)
		}
	}
	fs.mu.Lock()
	if valid&gofuse.FATTR_MODE != 0 {
		fs.mode = in.Mode & 0o7777
	}
	if valid&gofuse.FATTR_UID != 0 {
		fs.uid = in.Uid
	}
	if valid&gofuse.FATTR_GID != 0 {
		fs.gid = in.Gid
	}
	fs.mu.Unlock()
	fs.attr(in.NodeId, out)
	return gofuse.OK
}

func (fs *fileSystem) Open(cancel <-chan struct{}, in *gofuse.OpenIn, out *gofuse.OpenOut) gofuse.Status {
	if !fs.enter() {
		return gofuse.Status(syscall.ENOTCONN)
	}
	fs.exit()
	return gofuse.OK
}

func (fs *fileSystem) Release(cancel <-chan struct{}, in *gofuse.ReleaseIn) {}

func (fs *fileSystem) Read(cancel <-chan struct{}, in *gofuse.ReadIn, buf []byte) (gofuse.ReadResult, gofuse.Status) {
	if !fs.enter() {
		return nil, gofuse.Status(syscall.ENOTCONN)
	}
	defer fs.exit()
	n := int64(in.Size)
	if n > maxRequest {
		return nil, gofuse.EINVAL
	}
	off := int64(in.Offset)
	size := fs.b.Size()
	if off >= size {
		return gofuse.ReadResultData(nil), gofuse.OK
	}
	n = min(n, size-off) // a short read at the end of the file
	if int64(len(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if err := fs.b.ReadAt(context.Background(), buf, off); err != nil {
		return nil, status(err)
	}
	return gofuse.ReadResultData(buf), gofuse.OK
}

func (fs *fileSystem) Write(cancel <-chan struct{}, in *gofuse.WriteIn, data []byte) (uint32, gofuse.Status) {
	if !fs.enter() {
		return 0, gofuse.Status(syscall.ENOTCONN)
	}
	defer fs.exit()
	if len(data) > maxRequest {
		return 0, gofuse.EINVAL
	}
	if !fs.writable {
		return 0, gofuse.EACCES
	}
	ctx := context.Background()
	off, n := int64(in.Offset), int64(len(data))
	if size := fs.b.Size(); off+n > size {
		if fs.growable {
			if err := fs.b.Truncate(ctx, off+n); err != nil {
				return 0, status(err)
			}
		} else {
			// A short write at the end of the file; none past it.
			n = max(size-off, 0)
		}
	}
	if n == 0 {
		return 0, gofuse.OK
	}
	if err := fs.b.WriteAt(ctx, data[:n], off, false); err != nil {
		return 0, status(err)
	}
	return uint32(n), gofuse.OK
}

func (fs *fileSystem) Fallocate(cancel <-chan struct{}, in *gofuse.FallocateIn) gofuse.Status {
	if !fs.enter() {
		return gofuse.Status(syscall.ENOTCONN)
	}
	defer fs.exit()
	if !fs.writable {
		return gofuse.EACCES
	}
	return fs.fallocate(context.Background(), in.Mode, int64(in.Offset), int64(in.Length))
}

func (fs *fileSystem) fallocate(ctx context.Context, mode uint32, off, n int64) gofuse.Status {
	size := fs.b.Size()
	if mode&unix.FALLOC_FL_KEEP_SIZE != 0 {
		n = min(n, size-off)
	}
	switch {
	case mode == 0:
		// Allocating is only possible by growing the file.
		if off < size {
			return gofuse.Status(syscall.EOPNOTSUPP)
		}
		return status(fs.b.Truncate(ctx, off+n))
	case mode&unix.FALLOC_FL_PUNCH_HOLE != 0:
		if mode&unix.FALLOC_FL_KEEP_SIZE == 0 {
			return gofuse.EINVAL
		}
		// compat(qsd-7.2): a punched hole is a discard, so whether it
		// reads back as zeroes depends on the node's discard option.
		return status(fs.inRange(off, n, func() error { return fs.b.Trim(ctx, off, n, false) }))
	case mode&unix.FALLOC_FL_ZERO_RANGE != 0:
		if mode&unix.FALLOC_FL_KEEP_SIZE == 0 && off+n > size {
			if err := fs.b.Truncate(ctx, off+n); err != nil {
				return status(err)
			}
		}
		return status(fs.inRange(off, n, func() error { return fs.b.Zero(ctx, off, n, false, false, false) }))
	}
	return gofuse.Status(syscall.EOPNOTSUPP)
}

// inRange runs op on [off, off+n) if that range lies inside the node: a
// range reaching past the end is an I/O error (as in qsd), an empty one
// does nothing.
func (fs *fileSystem) inRange(off, n int64, op func() error) error {
	switch {
	case n < 0 || off < 0 || off > fs.b.Size()-n:
		return syscall.EIO
	case n == 0:
		return nil
	}
	return op()
}

func (fs *fileSystem) Flush(cancel <-chan struct{}, in *gofuse.FlushIn) gofuse.Status {
	return fs.flush()
}

func (fs *fileSystem) Fsync(cancel <-chan struct{}, in *gofuse.FsyncIn) gofuse.Status {
	return fs.flush()
}

func (fs *fileSystem) flush() gofuse.Status {
	if !fs.enter() {
		return gofuse.Status(syscall.ENOTCONN)
	}
	defer fs.exit()
	return status(fs.b.Flush(context.Background()))
}

func (fs *fileSystem) Lseek(cancel <-chan struct{}, in *gofuse.LseekIn, out *gofuse.LseekOut) gofuse.Status {
	if !fs.enter() {
		return gofuse.Status(syscall.ENOTCONN)
	}
	defer fs.exit()
	if in.Whence != unix.SEEK_DATA && in.Whence != unix.SEEK_HOLE {
		return gofuse.EINVAL
	}
	wantData := in.Whence == unix.SEEK_DATA
	off := int64(in.Offset)
	for {
		size := fs.b.Size()
		if off >= size {
			// The end of the file is a hole; nothing lies beyond it.
			if off > size || wantData {
				return gofuse.Status(syscall.ENXIO)
			}
			out.Offset = uint64(off)
			return gofuse.OK
		}
		data, n, err := fs.b.DataAt(context.Background(), off)
		if err != nil {
			return status(err)
		}
		if data == wantData {
			out.Offset = uint64(off)
			return gofuse.OK
		}
		if n <= 0 {
			return gofuse.Status(syscall.ENXIO)
		}
		off += n
	}
}

// StatFs answers as libfuse does for a file system without statfs.
func (fs *fileSystem) StatFs(cancel <-chan struct{}, in *gofuse.InHeader, out *gofuse.StatfsOut) gofuse.Status {
	*out = gofuse.StatfsOut{Bsize: 512, NameLen: 255}
	return gofuse.OK
}
