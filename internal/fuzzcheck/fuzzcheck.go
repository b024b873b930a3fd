// Package fuzzcheck holds what the fuzz targets share: the bound on what
// one input may allocate. A parser that trusts a length field from the
// wire or from an image ("4 GiB of snapshot table follow") allocates what
// it is told; the targets wrap each input in Bounded so that such an
// input fails the run even when the machine has the memory to survive it.
package fuzzcheck

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"testing"
)

// A fuzzing process's output goes nowhere: when a panic in a goroutine
// other than the test's, or go test's own 10 s "deadlocked!" timer, ends
// it, go test says only "fuzzing process hung or terminated
// unexpectedly". With FUZZCRASHDIR set (scripts/fuzz.sh sets it), each
// test process copies its fatal panic and stacks to a file there.
func init() {
	dir := os.Getenv("FUZZCRASHDIR")
	if dir == "" {
		return
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("crash-%d.txt", os.Getpid())))
	if err != nil {
		return
	}
	_ = debug.SetCrashOutput(f, debug.CrashOptions{})
	f.Close() // SetCrashOutput keeps its own descriptor
}

// MaxAlloc is what one fuzz input may allocate in all: far above what any
// parser needs for the small inputs the targets feed, far below what a
// length field of 32 bits or more asks for.
const MaxAlloc = 256 << 20

var sample = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

// allocated is the process's cumulative heap allocation. Large objects
// count at once; small ones when their span is handed out, which is
// precise enough for a bound of many MiB.
func allocated() uint64 {
	s := make([]metrics.Sample, len(sample))
	copy(s, sample)
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// Bounded runs fn and fails t if the process allocated more than MaxAlloc
// bytes meanwhile. It counts every goroutine, so servers that handle the
// input in goroutines of their own are measured too (and the rest of the
// process, which is idle while a fuzz input runs).
func Bounded(t testing.TB, fn func()) {
	t.Helper()
	before := allocated()
	fn()
	if d := allocated() - before; d > MaxAlloc {
		t.Fatalf("one input allocated %d MiB (bound %d MiB): a length from the input was trusted", d>>20, MaxAlloc>>20)
	}
}
