//go:build ceph

package rbd

/*
#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

// librbd copies every write into a buffer it mallocs on the calling
// thread, and a librados thread frees it once sent. glibc gives each
// thread that allocates an arena of its own (up to eight per CPU), and
// in blockd that thread is whichever of the Go runtime's threads the
// goroutine runs on: the buffers spread over many arenas, whose freed
// memory goes back to the kernel and faults in again on the next write
// (qsd allocates them all on its one I/O thread). Capping the arenas at
// one per CPU (two to eight) cut blockd's CPU time for the 1 GiB mirror
// of bench/rbdbench by about a third (docs/benchmarks.md).
//
// It must run before the Go runtime starts its threads (each makes an
// arena on its first malloc, and the cap does not undo them), so it is
// a constructor: it runs when the program is loaded. MALLOC_ARENA_MAX,
// when set, is left to glibc.
__attribute__((constructor)) static void blockdMallocArenas(void) {
	if (getenv("MALLOC_ARENA_MAX") != NULL) {
		return;
	}
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 2) {
		n = 2;
	}
	if (n > 8) {
		n = 8;
	}
	mallopt(M_ARENA_MAX, (int)n);
}
*/
import "C"
