//go:build ceph

package rbd

/*
#include <stdint.h>
#include <sys/types.h>
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// blockdRBDDiff is rbd_diff_iterate2's callback.
//
//export blockdRBDDiff
func blockdRBDDiff(off C.uint64_t, n C.size_t, exists C.int, arg unsafe.Pointer) C.int {
	f := cgo.Handle(uintptr(arg)).Value().(diffFunc)
	if !f(int64(off), int64(n), exists != 0) {
		return errStop
	}
	return 0
}
