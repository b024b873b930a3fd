package block_test

import (
	"context"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

type recordEmitter struct {
	mu sync.Mutex
	ev []block.WriteThresholdEvent
}

func (r *recordEmitter) Emit(name string, data any) {
	if e, ok := data.(block.WriteThresholdEvent); ok && name == "BLOCK_WRITE_THRESHOLD" {
		r.mu.Lock()
		r.ev = append(r.ev, e)
		r.mu.Unlock()
	}
}

func TestWriteThreshold(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		threshold uint64
		do        func(r *block.Root) error
		want      []block.WriteThresholdEvent // nil: none
	}{
		{"write ending at the threshold", 8192, func(r *block.Root) error { return r.WriteAt(ctx, make([]byte, 4096), 4096, 0) }, nil},
		{"write past it", 8192, func(r *block.Root) error { return r.WriteAt(ctx, make([]byte, 4096), 6144, 0) },
			[]block.WriteThresholdEvent{{NodeName: "m", AmountExceeded: 2048, WriteThreshold: 8192}}},
		{"write-zeroes past it", 8192, func(r *block.Root) error { return r.Zero(ctx, 0, 65536, 0) },
			[]block.WriteThresholdEvent{{NodeName: "m", AmountExceeded: 65536 - 8192, WriteThreshold: 8192}}},
		{"fires once", 512, func(r *block.Root) error {
			for i := range 3 {
				if err := r.WriteAt(ctx, make([]byte, 512), int64(i)*4096, 0); err != nil {
					return err
				}
			}
			return nil
		}, []block.WriteThresholdEvent{{NodeName: "m", AmountExceeded: 4096, WriteThreshold: 512}}}, // the second write: 4096+512-512
		{"disarmed", 0, func(r *block.Root) error { return r.WriteAt(ctx, make([]byte, 4096), 61440, 0) }, nil},
		{"reads never", 512, func(r *block.Root) error { return r.ReadAt(ctx, make([]byte, 4096), 4096, 0) }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := blocktest.NewGraph()
			rec := &recordEmitter{}
			g.SetEmitter(rec)
			n := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"m","size":65536}`)
			r := blocktest.NewRoot(t, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
			n.SetWriteThreshold(tc.threshold)
			if err := tc.do(r); err != nil {
				t.Fatal(err)
			}
			if len(rec.ev) != len(tc.want) || (len(tc.want) > 0 && rec.ev[0] != tc.want[0]) {
				t.Errorf("events %+v, want %+v", rec.ev, tc.want)
			}
			if tc.want != nil && n.WriteThreshold() != 0 {
				t.Errorf("threshold after firing: %d", n.WriteThreshold())
			}
		})
	}
}
