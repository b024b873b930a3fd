//go:build ceph

package rbd

/*
#cgo LDFLAGS: -lrbd -lrados
#include <errno.h>
#include <stdlib.h>
#include <stdint.h>
#include <rbd/librbd.h>

// Defined in callback_ceph.go.
extern int blockdRBDDiff(uint64_t off, size_t len, int exists, void *arg);

enum { opRead, opWrite, opDiscard, opZero, opFlush };

// aioStart starts one request. Its completion has no callback: librbd
// queues it on the image and signals the image's eventfd (see
// rbd_set_image_notification), and aioDrain collects it; id comes back
// from there. On error nothing was started.
static int aioStart(rbd_image_t img, int op, uint64_t off, uint64_t len, char *buf, int zflags, uintptr_t id) {
	rbd_completion_t c;
	int r = rbd_aio_create_completion((void *)id, NULL, &c);
	if (r < 0) {
		return r;
	}
	switch (op) {
	case opRead:    r = rbd_aio_read(img, off, len, buf, c); break;
	case opWrite:   r = rbd_aio_write(img, off, len, buf, c); break;
	case opDiscard: r = rbd_aio_discard(img, off, len, c); break;
	case opZero:    r = rbd_aio_write_zeroes(img, off, len, c, zflags, 0); break;
	case opFlush:   r = rbd_aio_flush(img, c); break;
	default:        r = -EINVAL;
	}
	if (r < 0) {
		rbd_aio_release(c);
	}
	return r;
}

// aioDrain takes up to max finished requests off the image's queue:
// their ids and results into ids and rets, the completions freed. It
// returns how many, or a negative errno.
static int aioDrain(rbd_image_t img, uintptr_t *ids, int64_t *rets, int max) {
	rbd_completion_t cs[64];
	if (max > 64) {
		max = 64;
	}
	int n = rbd_poll_io_events(img, cs, max);
	for (int i = 0; i < n; i++) {
		ids[i] = (uintptr_t)rbd_aio_get_arg(cs[i]);
		rets[i] = rbd_aio_get_return_value(cs[i]);
		rbd_aio_release(cs[i]);
	}
	return n;
}

static int diffIterate(rbd_image_t img, uint64_t off, uint64_t len, uintptr_t h) {
	return rbd_diff_iterate2(img, NULL, off, len, 1, 1, blockdRBDDiff, (void *)h);
}

static int openImage(rados_ioctx_t io, const char *name, const char *snap, int ro, rbd_image_t *img) {
	if (ro) {
		return rbd_open_read_only(io, name, img, snap);
	}
	return rbd_open(io, name, img, snap);
}

static uint64_t snapSize(rbd_snap_info_t *s, int i) { return s[i].size; }
static const char *snapName(rbd_snap_info_t *s, int i) { return s[i].name; }
*/
import "C"

import (
	"errors"
	"io"
	"os"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/ceph/go-ceph/rados"
	"golang.org/x/sys/unix"
)

// image is an open librbd image. Its methods may be called from many
// goroutines at once (librbd's image handle is thread-safe); I/O is
// asynchronous: a request is started with librbd's aio call and the
// calling goroutine parks on a channel until the image's poller hands it
// the result. librbd signals finished requests on an eventfd, which the
// poller waits on through Go's netpoller, and queues them on the image
// (rbd_set_image_notification, rbd_poll_io_events); the poller collects
// them in batches. So no librbd thread ever calls into Go: librbd runs
// completion callbacks one after another on one strand, and a callback
// into Go from a foreign thread must first get a P from the scheduler,
// which under load held up every completion behind it. No OS thread and
// no extra goroutine waits per request: the number of requests in
// flight is bounded only by the callers.
type image struct {
	h      C.rbd_image_t
	events *os.File      // the eventfd librbd signals finished requests on
	stop   atomic.Bool   // the poller is to exit at its next wakeup
	polled chan struct{} // closed when the poller has exited

	mu   sync.Mutex
	reqs []*aioReq // every request slot so far, by id; guarded by mu
	free []*aioReq // the slots not in flight; guarded by mu
}

func openImage(ioctx *rados.IOContext, name, snap string, readOnly bool) (*image, error) {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var csnap *C.char
	if snap != "" {
		csnap = C.CString(snap)
		defer C.free(unsafe.Pointer(csnap))
	}
	ro := C.int(0)
	if readOnly {
		ro = 1
	}
	img := &image{polled: make(chan struct{})}
	if r := C.openImage(C.rados_ioctx_t(ioctx.Pointer()), cname, csnap, ro, &img.h); r < 0 {
		return nil, syscall.Errno(-r)
	}
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		C.rbd_close(img.h)
		return nil, err
	}
	if r := C.rbd_set_image_notification(img.h, C.int(fd), C.EVENT_TYPE_EVENTFD); r < 0 {
		C.rbd_close(img.h)
		unix.Close(fd)
		return nil, syscall.Errno(-r)
	}
	// Non-blocking, so that the poller's read parks in the netpoller,
	// not on a thread of its own.
	img.events = os.NewFile(uintptr(fd), "rbd-events")
	go img.poll()
	return img, nil
}

// poll hands finished requests to their waiters until close stops it.
func (img *image) poll() {
	defer close(img.polled)
	var (
		b    [8]byte
		ids  [64]C.uintptr_t
		rets [64]C.int64_t
	)
	for {
		if _, err := img.events.Read(b[:]); err != nil && !errors.Is(err, io.EOF) {
			return // closed under us: nothing can be in flight
		}
		if img.stop.Load() {
			return
		}
		for {
			n := int(C.aioDrain(img.h, &ids[0], &rets[0], C.int(len(ids))))
			if n <= 0 {
				break
			}
			img.mu.Lock()
			for i := range n {
				img.reqs[ids[i]].done <- int64(rets[i])
			}
			img.mu.Unlock()
			if n < len(ids) {
				break
			}
		}
	}
}

// close closes the image; nothing may be in flight. The poller is
// stopped first (it must not poll a closed image) and the eventfd closed
// last (librbd must not signal a number that may be reused).
func (img *image) close() error {
	img.stop.Store(true)
	var one [8]byte
	one[0] = 1 // little-endian 1: wakes the poller
	_, _ = img.events.Write(one[:])
	<-img.polled
	r := C.rbd_close(img.h)
	img.events.Close()
	if r < 0 {
		return syscall.Errno(-r)
	}
	return nil
}

// aioReq is a request slot: one request in flight at a time. librbd
// gets its id and the poller hands the result to done.
type aioReq struct {
	id   uintptr
	done chan int64
}

func (img *image) getReq() *aioReq {
	img.mu.Lock()
	defer img.mu.Unlock()
	if n := len(img.free); n > 0 {
		req := img.free[n-1]
		img.free = img.free[:n-1]
		return req
	}
	req := &aioReq{id: uintptr(len(img.reqs)), done: make(chan int64, 1)}
	img.reqs = append(img.reqs, req)
	return req
}

func (img *image) putReq(req *aioReq) {
	img.mu.Lock()
	img.free = append(img.free, req)
	img.mu.Unlock()
}

const (
	opRead    = C.opRead
	opWrite   = C.opWrite
	opDiscard = C.opDiscard
	opZero    = C.opZero
	opFlush   = C.opFlush
)

// do runs one request and waits for it. buf (for reads and writes) is
// pinned until librbd is done with it. It returns librbd's result: a
// byte count or a negative errno.
func (img *image) do(op C.int, off, n uint64, buf []byte, zflags C.int) int64 {
	req := img.getReq()
	var p *C.char
	var pin runtime.Pinner
	if len(buf) > 0 {
		pin.Pin(&buf[0])
		p = (*C.char)(unsafe.Pointer(&buf[0]))
	}
	defer pin.Unpin()
	if r := C.aioStart(img.h, op, C.uint64_t(off), C.uint64_t(n), p, zflags, C.uintptr_t(req.id)); r < 0 {
		img.putReq(req)
		return int64(r)
	}
	r := <-req.done
	img.putReq(req)
	return r
}

func errno(r int64) error {
	if r >= 0 {
		return nil
	}
	return syscall.Errno(-r)
}

func (img *image) read(p []byte, off int64) error {
	r := img.do(opRead, uint64(off), uint64(len(p)), p, 0)
	if r < 0 {
		return errno(r)
	}
	if r < int64(len(p)) {
		clear(p[r:]) // past the end: zeroes
	}
	return nil
}

func (img *image) write(p []byte, off int64) error {
	// librbd reports 0 for a complete write.
	return errno(img.do(opWrite, uint64(off), uint64(len(p)), p, 0))
}

func (img *image) discard(off, n int64) error {
	return errno(img.do(opDiscard, uint64(off), uint64(n), nil, 0))
}

// writeZeroes zeroes the range; thick keeps it allocated.
func (img *image) writeZeroes(off, n int64, thick bool) error {
	var f C.int
	if thick {
		f = C.RBD_WRITE_ZEROES_FLAG_THICK_PROVISION
	}
	return errno(img.do(opZero, uint64(off), uint64(n), nil, f))
}

func (img *image) flush() error { return errno(img.do(opFlush, 0, 0, nil, 0)) }

func (img *image) size() (int64, error) {
	var s C.uint64_t
	if r := C.rbd_get_size(img.h, &s); r < 0 {
		return 0, syscall.Errno(-r)
	}
	return int64(s), nil
}

func (img *image) resize(size int64) error {
	if r := C.rbd_resize(img.h, C.uint64_t(size)); r < 0 {
		return syscall.Errno(-r)
	}
	return nil
}

// objectSize is the image's object size (its "order" as bytes).
func (img *image) objectSize() (int64, error) {
	var info C.rbd_image_info_t
	if r := C.rbd_stat(img.h, &info, C.size_t(unsafe.Sizeof(info))); r < 0 {
		return 0, syscall.Errno(-r)
	}
	return int64(info.obj_size), nil
}

func (img *image) features() (uint64, error) {
	var f C.uint64_t
	if r := C.rbd_get_features(img.h, &f); r < 0 {
		return 0, syscall.Errno(-r)
	}
	return uint64(f), nil
}

func (img *image) flags() (uint64, error) {
	var f C.uint64_t
	if r := C.rbd_get_flags(img.h, &f); r < 0 {
		return 0, syscall.Errno(-r)
	}
	return uint64(f), nil
}

const (
	featureFastDiff     = C.RBD_FEATURE_FAST_DIFF
	featureObjectMap    = C.RBD_FEATURE_OBJECT_MAP
	featureExclusive    = C.RBD_FEATURE_EXCLUSIVE_LOCK
	flagFastDiffInvalid = C.RBD_FLAG_FAST_DIFF_INVALID
)

// diffFunc receives the extents rbd_diff_iterate2 reports, in order;
// returning false stops the iteration.
type diffFunc func(off, n int64, exists bool) bool

// errStop is the value blockdRBDDiff returns to stop an iteration.
const errStop = -C.ECANCELED

// diff iterates over the allocated extents of [off, off+n) against
// nothing (so: what is allocated at all), parents included, in whole
// objects (fast with the object map).
func (img *image) diff(off, n int64, f diffFunc) error {
	h := cgo.NewHandle(f)
	defer h.Delete()
	r := C.diffIterate(img.h, C.uint64_t(off), C.uint64_t(n), C.uintptr_t(h))
	if r < 0 && r != errStop {
		return syscall.Errno(-r)
	}
	return nil
}

type snapInfo struct {
	name string
	size uint64
}

func (img *image) snapshots() ([]snapInfo, error) {
	max := C.int(16)
	for {
		buf := make([]C.rbd_snap_info_t, max)
		r := C.rbd_snap_list(img.h, &buf[0], &max)
		if r == -C.ERANGE {
			continue // max now says how many there are
		}
		if r < 0 {
			return nil, syscall.Errno(-r)
		}
		out := make([]snapInfo, 0, r)
		for i := C.int(0); i < r; i++ {
			out = append(out, snapInfo{name: C.GoString(C.snapName(&buf[0], i)), size: uint64(C.snapSize(&buf[0], i))})
		}
		C.rbd_snap_list_end(&buf[0])
		return out, nil
	}
}

func (img *image) snapCreate(name string) error {
	c := C.CString(name)
	defer C.free(unsafe.Pointer(c))
	if r := C.rbd_snap_create(img.h, c); r < 0 {
		return syscall.Errno(-r)
	}
	return nil
}

func (img *image) snapRemove(name string) error {
	c := C.CString(name)
	defer C.free(unsafe.Pointer(c))
	if r := C.rbd_snap_remove(img.h, c); r < 0 {
		return syscall.Errno(-r)
	}
	return nil
}
