package compress_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/filters/compress"
	"github.com/blockd/blockd/pkg/filters/internal/filtertest"
)

func build(t testing.TB, g *block.Graph, mem string) (*block.Node, []*block.Node) {
	base := blocktest.Open(t, g, fmt.Sprintf(`{"node-name":"base","compressed":512,%s`, mem[1:]))
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"plain","size":4096}`)
	flt := blocktest.Open(t, g, `{"driver":"compress","node-name":"flt","discard":"unmap","file":"base"}`)
	return flt, []*block.Node{base}
}

func TestConformance(t *testing.T) {
	filtertest.Run(t, filtertest.Config{
		Build:        build,
		WidensWrites: true,
		WantCaps: func(c block.Caps) block.Caps {
			c.Limits.RequestAlign = max(c.Limits.RequestAlign, c.Limits.OptimalTransfer)
			return c
		},
		BadOptions: []filtertest.BadOption{
			filtertest.Bad("no compressed writes", `{"driver":"compress","node-name":"c1","file":"plain"}`,
				"Compression is not supported for underlying format: blocktest-mem"),
			filtertest.Bad("no such file", `{"driver":"compress","node-name":"c1","file":"nosuch"}`,
				"Cannot find device='nosuch' nor node-name='nosuch'"),
		},
	})
}

// Every write reaches the child compressed, whole clusters, the short
// last one cut at the end.
func TestWritesCompressed(t *testing.T) {
	g := blocktest.NewGraph()
	base := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"base","size":1050000,"compressed":65536}`)
	flt := blocktest.Open(t, g, `{"driver":"compress","node-name":"flt","file":"base"}`)
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead|block.PermWrite, block.PermAll)
	ctx := context.Background()
	for _, w := range [][2]int64{{0, 65536}, {70000, 1000}, {1040000, 10000}, {131072, 262144}} {
		if err := r.WriteAt(ctx, make([]byte, w[1]), w[0], 0); err != nil {
			t.Fatalf("write %v: %v", w, err)
		}
	}
	m := base.Impl().(*blocktest.Mem)
	if m.CompressedWrites != 4 || m.Writes != 4 {
		t.Fatalf("%d compressed writes of %d", m.CompressedWrites, m.Writes)
	}
}
