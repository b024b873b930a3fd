// Package lint holds tests that keep the tree's shape: which packages may
// import which (DESIGN.md's layout), and a few banned calls.
package lint

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const mod = "github.com/blockd/blockd/"

// deps runs go list for a package and returns its dependencies of ours.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", mod+pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	var ours []string
	for _, l := range strings.Fields(string(out)) {
		if strings.HasPrefix(l, mod) && l != mod+pkg {
			ours = append(ours, strings.TrimPrefix(l, mod))
		}
	}
	return ours
}

// TestDependencies: qmp and nbd import nothing of ours (nbd only its
// wire numbers, which the nbd driver shares, and kpipe's pipes); block imports
// only small utilities; drivers and jobs import block and never each
// other; only blockdev and cmd tie everything together.
func TestDependencies(t *testing.T) {
	tests := []struct {
		pkg     string
		allowed []string // prefixes
	}{
		{"pkg/qmp", nil},
		{"pkg/nbd", []string{"pkg/nbd/wire", "pkg/kpipe"}}, // its own wire numbers, shared with the client; pipes
		{"pkg/nbd/wire", nil},
		{"pkg/kpipe", nil},
		{"pkg/fuse", []string{"pkg/block"}},
		{"pkg/block", nil},
		{"pkg/chardev", []string{"pkg/qmp"}}, // knows nothing of blocks
		{"pkg/jobs", []string{"pkg/block", "pkg/kpipe"}},
		{"pkg/jobs/stream", []string{"pkg/block", "pkg/jobs", "pkg/kpipe"}},
		{"pkg/jobs/commit", []string{"pkg/block", "pkg/jobs", "pkg/kpipe"}},
		{"pkg/jobs/mirror", []string{"pkg/block", "pkg/jobs", "pkg/kpipe"}},
		{"pkg/jobs/backup", []string{"pkg/block", "pkg/jobs", "pkg/kpipe"}},
		{"pkg/formats/file", []string{"pkg/block"}},
		{"pkg/formats/nullco", []string{"pkg/block"}},
		{"pkg/formats/raw", []string{"pkg/block"}},
		{"pkg/formats/snapshotaccess", []string{"pkg/block"}},
		{"pkg/formats/qcow2", []string{"pkg/block"}},
		{"pkg/formats/rbd", []string{"pkg/block"}}, // with or without the ceph tag
		// The nbd driver decodes its SocketAddress union itself, with QMP's
		// strict decoder for qsd's wording (qmp knows nothing of blocks,
		// so the direction holds).
		{"pkg/formats/nbd", []string{"pkg/block", "pkg/nbd/wire", "pkg/qmp"}},
		{"pkg/filters/throttle", []string{"pkg/block", "pkg/filters/internal"}},
		{"pkg/filters/cor", []string{"pkg/block", "pkg/filters/internal"}},
		{"pkg/filters/blkdebug", []string{"pkg/block", "pkg/filters/internal"}},
		{"pkg/filters/quorum", []string{"pkg/block", "pkg/filters/internal"}},
		{"pkg/filters/compress", []string{"pkg/block"}},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
		next:
			for _, d := range deps(t, tt.pkg) {
				for _, a := range tt.allowed {
					if d == a || strings.HasPrefix(d, a+"/") {
						continue next
					}
				}
				t.Errorf("%s imports %s", tt.pkg, d)
			}
		})
	}
}

// TestBannedCalls: no sleeping and no standard-library logging in
// daemon code (use the clock and the injected logger).
func TestBannedCalls(t *testing.T) {
	banned := regexp.MustCompile(`\btime\.Sleep\(|\blog\.Print|\blog\.Fatal`)
	root := "../.."
	for _, dir := range []string{"pkg", "cmd"} {
		filepath.Walk(filepath.Join(root, dir), func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for i, line := range strings.Split(string(b), "\n") {
				if banned.MatchString(line) && !strings.HasPrefix(strings.TrimSpace(line), "//") {
					t.Errorf("%s:%d: %s", path, i+1, strings.TrimSpace(line))
				}
			}
			return nil
		})
	}
}
