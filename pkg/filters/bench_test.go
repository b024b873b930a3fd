package filters_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/filters"
	"github.com/blockd/blockd/pkg/filters/throttle"
	_ "github.com/blockd/blockd/pkg/formats/file"
)

// BenchmarkPassThrough measures what a filter with nothing to do costs
// over the node below it, on the wall clock: a memory node alone, a
// throttle node (group without limits) over one, and a copy-on-read node
// (nothing to copy) over one. The three run interleaved, in rounds of
// batch requests each, so that a noisy machine slows them alike; the
// metrics are ns per request of each and the filters' overhead in percent
// of the memory node's time.
//
// The base is a memory node (about 200 ns per 4 KiB request: the worst
// case for relative overhead) or a file in the page cache (a real
// device's cost, still without any disk).
func BenchmarkPassThrough(b *testing.B) {
	const size, batch = 1 << 20, 64
	for _, base := range []string{"mem", "file"} {
		for _, req := range []int{4 << 10, 64 << 10} {
			for _, op := range []string{"read", "write"} {
				b.Run(fmt.Sprintf("%s/%s/%dKiB", base, op, req>>10), func(b *testing.B) {
					ctx := context.Background()
					names := []string{"mem", "throttle", "copy-on-read"}
					roots := make([]*block.Root, len(names))
					for i, name := range names {
						g := blocktest.NewGraph()
						grp, err := throttle.NewGroup("tg0", throttle.Limits{})
						if err != nil {
							b.Fatal(err)
						}
						g.Lock()
						if err := g.AddObject("tg0", grp); err != nil {
							b.Fatal(err)
						}
						g.Unlock()
						var n *block.Node
						if base == "mem" {
							n = blocktest.Open(b, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":"mem","size":%d,"pattern":1}`, size))
						} else {
							path := filepath.Join(b.TempDir(), "f")
							if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
								b.Fatal(err)
							}
							n = blocktest.Open(b, g, fmt.Sprintf(`{"driver":"file","node-name":"mem","filename":%q}`, path))
						}
						switch name {
						case "throttle":
							n = blocktest.Open(b, g, `{"driver":"throttle","node-name":"flt","throttle-group":"tg0","file":"mem"}`)
						case "copy-on-read":
							n = blocktest.Open(b, g, `{"driver":"copy-on-read","node-name":"flt","file":"mem"}`)
						}
						roots[i] = blocktest.NewRoot(b, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
					}
					buf := make([]byte, req)
					spent := make([]time.Duration, len(names))
					rounds := 0
					b.SetBytes(int64(req * batch * len(names)))
					for b.Loop() {
						for i, r := range roots {
							start := time.Now()
							for k := range batch {
								off := int64((rounds*batch+k)*req) % size
								var err error
								if op == "read" {
									err = r.ReadAt(ctx, buf, off, 0)
								} else {
									err = r.WriteAt(ctx, buf, off, 0)
								}
								if err != nil {
									b.Fatal(err)
								}
							}
							spent[i] += time.Since(start)
						}
						rounds++
					}
					per := func(i int) float64 { return float64(spent[i]) / float64(rounds*batch) }
					for i, name := range names {
						b.ReportMetric(per(i), name+"-ns/req")
					}
					for i, name := range names[1:] {
						b.ReportMetric(100*(per(i+1)-per(0))/per(0), name+"-%")
					}
				})
			}
		}
	}
}
