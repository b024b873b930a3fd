package fuse

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
)

// AllowOther is FuseExportAllowOther: whether users other than the
// daemon's may use the mounted file.
type AllowOther string

// The values of AllowOther.
const (
	AllowOtherOff  AllowOther = "off"
	AllowOtherOn   AllowOther = "on"
	AllowOtherAuto AllowOther = "auto" // on if the mount allows it, else off
)

// Options describe an export.
type Options struct {
	Mountpoint string // an existing regular file
	Writable   bool
	Growable   bool       // writes past the end grow the node
	AllowOther AllowOther // "" is auto
	Logger     logrus.FieldLogger
}

// Export is a mounted FUSE export.
type Export struct {
	fs     *fileSystem
	srv    *gofuse.Server
	path   string        // absolute mountpoint
	served chan struct{} // closed when go-fuse's loop has ended
	log    logrus.FieldLogger
	once   sync.Once
}

// ErrMount is the class of a mount that failed after the mountpoint was
// found usable; errors.Is also finds the errno (EPERM without
// CAP_SYS_ADMIN).
var ErrMount = errors.New("Failed to mount FUSE session to export")

// mountError is qsd's message for a failed mount with the reason added.
type mountError struct{ cause error }

func (e *mountError) Error() string {
	return ErrMount.Error() + ": " + block.Strerror(e.cause)
}

func (e *mountError) Unwrap() []error { return []error{ErrMount, e.cause} }

// Mount serves b as a regular file over o.Mountpoint.
func Mount(b Backend, o Options) (*Export, error) {
	if o.Logger == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		o.Logger = l
	}
	if err := checkRegular(o.Mountpoint); err != nil {
		return nil, err
	}
	path, err := filepath.Abs(o.Mountpoint)
	if err != nil {
		return nil, err
	}
	fs := newFileSystem(b, o.Writable, o.Growable)
	var fd int
	switch o.AllowOther {
	case AllowOtherOn, AllowOtherOff:
		fs.allowOther = o.AllowOther == AllowOtherOn
		fd, err = mount(path, fs.allowOther)
	default:
		// compat(qsd-7.2): auto tries allow_other and quietly drops it
		// when the mount refuses it.
		fs.allowOther = true
		if fd, err = mount(path, true); err != nil {
			fs.allowOther = false
			fd, err = mount(path, false)
		}
	}
	if err != nil {
		return nil, &mountError{err}
	}
	e := &Export{fs: fs, path: path, served: make(chan struct{}), log: o.Logger}
	// go-fuse serves a /dev/fuse descriptor it is handed as /dev/fd/N;
	// it owns the descriptor from here on.
	e.srv, err = gofuse.NewServer(fs, fmt.Sprintf("/dev/fd/%d", fd), &gofuse.MountOptions{
		MaxWrite: maxRequest,
		Logger:   log.New(logWriter{o.Logger}, "go-fuse: ", 0),
	})
	if err != nil {
		_ = syscall.Unmount(path, syscall.MNT_FORCE|syscall.MNT_DETACH)
		return nil, &mountError{err}
	}
	go func() {
		defer close(e.served)
		e.srv.Serve()
	}()
	pollOnce(path)
	return e, nil
}

// pollOnce makes the kernel ask the export about poll once, so that it
// learns the answer (ENOSYS: the file is always ready) before anything
// in this process opens the file. Go registers the files it opens with
// its epoll, and an epoll registration that has to wait for a FUSE poll
// answer from the same process can starve the goroutines that would give
// it (go-fuse's WaitMount does the same with a file inside a mounted
// directory; here the mount is the file). The descriptor is opened raw so
// that it stays out of Go's poller.
func pollOnce(path string) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	syscall.Close(fd)
}

// checkRegular checks that the mountpoint is an existing regular file.
func checkRegular(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("Failed to stat '%s': %s", path, block.Strerror(err))
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("'%s' is not a regular file", path)
	}
	return nil
}

// mount opens a FUSE connection and mounts it over path with the options
// qsd 7.2 uses, and returns the connection's descriptor.
func mount(path string, allowOther bool) (int, error) {
	fd, err := syscall.Open("/dev/fuse", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	opts := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", syscall.S_IFREG),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
		"default_permissions",
		fmt.Sprintf("max_read=%d", maxRequest),
	}
	if allowOther {
		opts = append(opts, "allow_other")
	}
	err = syscall.Mount("/dev/fuse", path, "fuse", syscall.MS_NOSUID|syscall.MS_NODEV, strings.Join(opts, ","))
	if err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Mountpoint is the absolute path the export is mounted on.
func (e *Export) Mountpoint() string { return e.path }

// Close unmounts the export. MNT_FORCE makes the kernel abort the
// connection (open files get ENOTCONN from now on) and MNT_DETACH takes
// the mount away even while files on it are open. Close returns when no
// request uses the backend any more; it is idempotent.
func (e *Export) Close() {
	e.once.Do(func() {
		err := syscall.Unmount(e.path, syscall.MNT_FORCE|syscall.MNT_DETACH)
		if err != nil {
			// Someone else unmounted it: the connection ends when the
			// last file on it is closed; until then requests fail.
			e.log.WithError(err).WithField("mountpoint", e.path).Warn("fuse: unmount")
		}
		e.fs.close()
		if err == nil {
			<-e.served
		}
	})
}

// logWriter hands go-fuse's log lines to the daemon's logger.
type logWriter struct{ l logrus.FieldLogger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
