//go:build ceph

package rbd

/*
#cgo LDFLAGS: -lrbd -lrados
#include <errno.h>
#include <stdlib.h>
#include <stdint.h>
#include <rbd/librbd.h>

// Defined in callback_ceph.go.
extern void blockdRBDDone(uintptr_t h, ssize_t ret);
extern int blockdRBDDiff(uint64_t off, size_t len, int exists, void *arg);

// aioDone runs on a librbd thread when a request completes: it hands the
// result to Go and frees the completion.
static void aioDone(rbd_completion_t c, void *arg) {
	ssize_t r = rbd_aio_get_return_value(c);
	rbd_aio_release(c);
	blockdRBDDone((uintptr_t)arg, r);
}

enum { opRead, opWrite, opDiscard, opZero, opFlush };

// aioStart starts one request; h comes back to blockdRBDDone. On error
// nothing was started.
static int aioStart(rbd_image_t img, int op, uint64_t off, uint64_t len, char *buf, int zflags, uintptr_t h) {
	rbd_completion_t c;
	int r = rbd_aio_create_completion((void *)h, aioDone, &c);
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
	"runtime"
	"runtime/cgo"
	"syscall"
	"unsafe"

	"github.com/ceph/go-ceph/rados"
)

// image is an open librbd image. Its methods may be called from many
// goroutines at once (librbd's image handle is thread-safe); I/O is
// asynchronous: a request is started with librbd's aio call and the
// calling goroutine parks on a channel until librbd's completion
// callback (on one of librbd's own threads) reports the result. No OS
// thread and no extra goroutine waits per request, so the number of
// requests in flight is bounded only by the callers.
type image struct {
	h C.rbd_image_t
}

func openImage(io *rados.IOContext, name, snap string, readOnly bool) (*image, error) {
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
	img := &image{}
	if r := C.openImage(C.rados_ioctx_t(io.Pointer()), cname, csnap, ro, &img.h); r < 0 {
		return nil, syscall.Errno(-r)
	}
	return img, nil
}

func (img *image) close() error {
	if r := C.rbd_close(img.h); r < 0 {
		return syscall.Errno(-r)
	}
	return nil
}

// aioReq is one request in flight.
type aioReq struct {
	done chan int64
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
	req := &aioReq{done: make(chan int64, 1)}
	h := cgo.NewHandle(req)
	defer h.Delete()
	var p *C.char
	var pin runtime.Pinner
	if len(buf) > 0 {
		pin.Pin(&buf[0])
		p = (*C.char)(unsafe.Pointer(&buf[0]))
	}
	defer pin.Unpin()
	if r := C.aioStart(img.h, op, C.uint64_t(off), C.uint64_t(n), p, zflags, C.uintptr_t(h)); r < 0 {
		return int64(r)
	}
	return <-req.done
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
