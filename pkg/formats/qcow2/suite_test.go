package qcow2_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/file"
	_ "github.com/blockd/blockd/pkg/formats/qcow2"
)

// TestQcow2DriverSuite runs the contract every driver keeps over images
// made by qemu-img, with and without a backing file.
func TestQcow2DriverSuite(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed")
	}
	for _, tc := range []struct{ name, opts string }{
		{"v3", "-o cluster_size=65536"},
		{"v2 small clusters", "-o compat=0.10,cluster_size=4096"},
		{"extended l2", "-o extended_l2=on,cluster_size=131072"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blocktest.RunDriverSuite(t, blocktest.DriverCase{
				Open: func(t *testing.T, g *block.Graph) *block.Node {
					path := filepath.Join(t.TempDir(), "q.qcow2")
					args := append([]string{"create", "-q", "-f", "qcow2"}, splitOpts(tc.opts)...)
					if out, err := exec.Command("qemu-img", append(args, path, "4M")...).CombinedOutput(); err != nil {
						t.Fatalf("qemu-img: %v\n%s", err, out)
					}
					return blocktest.Open(t, g, fmt.Sprintf(`{"driver":"qcow2","node-name":"dut","file":{"driver":"file","filename":%q}}`, path))
				},
				Stores: true, ZeroReads: true, Resizable: true,
			})
		})
	}
}

func splitOpts(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s[:2], s[3:]}
}
