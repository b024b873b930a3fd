package fuzzcheck

import (
	"runtime"
	"testing"
)

type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Fatalf(string, ...any) { r.failed = true }

var sink []byte

func TestBounded(t *testing.T) {
	r := &recorder{TB: t}
	Bounded(r, func() { sink = make([]byte, 1<<20) })
	if r.failed {
		t.Fatal("1 MiB failed the bound")
	}
	Bounded(r, func() { sink = make([]byte, MaxAlloc+1) })
	if !r.failed {
		t.Fatal("an allocation over the bound passed")
	}
	sink = nil
	runtime.GC()
}
