package qcow2

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/file"
	_ "github.com/blockd/blockd/pkg/formats/raw"
)

// testDecode is encoding/json with QMP's treatment of "backing": null
// (encoding/json turns an explicit null into a nil pointer).
func testDecode(raw json.RawMessage, path string, dsts ...any) error {
	for _, d := range dsts {
		if err := json.Unmarshal(raw, d); err != nil {
			return err
		}
		if o, ok := d.(*Options); ok {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(raw, &m); err != nil {
				return err
			}
			if v, ok := m["backing"]; ok && string(bytes.TrimSpace(v)) == "null" {
				o.Backing = &block.NodeRefOrNull{NodeRef: block.NodeRef{Null: true}}
			}
		}
	}
	return nil
}

func newGraph() *block.Graph { return block.NewGraph(testDecode, nil) }

// nodeOpts builds qcow2 node options over a file.
func nodeOpts(name, path string, extra map[string]any) string {
	m := map[string]any{
		"driver":    "qcow2",
		"node-name": name,
		"discard":   "unmap",
		"file":      map[string]any{"driver": "file", "filename": path},
	}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// openImage opens path as node name and attaches a read-write root.
func openImage(t testing.TB, g *block.Graph, name, path string, extra map[string]any) (*block.Node, *block.Root) {
	t.Helper()
	n := openRetry(t, g, nodeOpts(name, path, extra))
	perm := block.PermConsistentRead
	if !n.ReadOnly() {
		perm |= block.PermWrite | block.PermResize
	}
	r := blocktest.NewRoot(t, n, perm, block.PermConsistentRead|block.PermWriteUnchanged|block.PermWrite|block.PermResize)
	return n, r
}

// openRetry opens a node, retrying while an image lock is held: a child
// process forked by a parallel test keeps a copy of every open file
// description, and so its locks, until it executes qemu-img.
func openRetry(t testing.TB, g *block.Graph, opts string) *block.Node {
	t.Helper()
	for i := 0; ; i++ {
		n, err := blocktest.TryOpen(g, opts)
		if err == nil {
			return n
		}
		if !strings.Contains(err.Error(), "Failed to get") || i == 100 {
			t.Fatalf("open %s: %v", opts, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closeImage detaches r and deletes node name, closing the files.
func closeImage(t testing.TB, g *block.Graph, r *block.Root, name string) {
	t.Helper()
	tx := g.Begin()
	if r != nil {
		tx.Detach(r)
	}
	if err := tx.Delete(name); err != nil {
		tx.Abort()
		t.Fatalf("delete %s: %v", name, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("delete %s: %v", name, err)
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runLocked(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// runLocked runs a command, retrying while it cannot get an image lock
// (see openRetry).
func runLocked(name string, args ...string) ([]byte, error) {
	for i := 0; ; i++ {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err == nil || !bytes.Contains(out, []byte("Failed to get")) || i == 100 {
			return out, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func qemuImg(t testing.TB, args ...string) string { t.Helper(); return run(t, "qemu-img", args...) }

// qemuIO runs qemu-io commands on a qcow2 image.
func qemuIO(t testing.TB, path string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, path)
	out := run(t, "qemu-io", args...)
	if strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io %v: %s", cmds, out)
	}
}

type checkResult struct {
	CheckErrors int `json:"check-errors"`
	Corruptions int `json:"corruptions"`
	Leaks       int `json:"leaks"`
	LeaksFixed  int `json:"leaks-fixed"`
}

// qemuCheck runs qemu-img check and fails on errors and corruptions (and
// on leaks unless allowLeaks).
func qemuCheck(t testing.TB, path string, allowLeaks bool) checkResult {
	t.Helper()
	var out []byte
	var err error
	for i := 0; i < 100; i++ {
		var stderr bytes.Buffer
		cmd := exec.Command("qemu-img", "check", "--output=json", path)
		cmd.Stderr = &stderr
		out, err = cmd.Output()
		if !bytes.Contains(stderr.Bytes(), []byte("Failed to get")) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var r checkResult
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		human, _ := exec.Command("qemu-img", "check", path).CombinedOutput()
		t.Fatalf("qemu-img check %s: %v %v\n%s\n%s", path, err, jerr, out, human)
	}
	if r.CheckErrors != 0 || r.Corruptions != 0 || (!allowLeaks && r.Leaks != 0) {
		human, _ := exec.Command("qemu-img", "check", path).CombinedOutput()
		t.Fatalf("qemu-img check %s: %+v\n%s", path, r, human)
	}
	return r
}

// rawContents converts an image to raw with qemu-img and returns it.
func rawContents(t testing.TB, path string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "raw")
	qemuImg(t, "convert", "-U", "-O", "raw", path, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll reads a whole device.
func readAll(t testing.TB, r *block.Root) []byte {
	t.Helper()
	b := make([]byte, r.Size())
	if err := r.ReadAt(context.Background(), b, 0, 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

// firstDiff describes where two buffers differ.
func firstDiff(a, b []byte) string {
	if bytes.Equal(a, b) {
		return ""
	}
	if len(a) != len(b) {
		return fmt.Sprintf("lengths %d and %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			j := i
			for j < len(a) && a[j] != b[j] {
				j++
			}
			return fmt.Sprintf("first difference at %#x (%d bytes): %#x vs %#x", i, j-i, a[i], b[i])
		}
	}
	return ""
}

var execCommand = exec.Command

// blocktestTryOpen is blocktest.TryOpen with the lock retry of openRetry.
func blocktestTryOpen(g *block.Graph, opts string) (*block.Node, error) {
	for i := 0; ; i++ {
		n, err := blocktest.TryOpen(g, opts)
		if err == nil || !strings.Contains(err.Error(), "Failed to get") || i == 100 {
			return n, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newRootT(t testing.TB, n *block.Node, perm block.Perm) *block.Root {
	return blocktest.NewRoot(t, n, perm, block.PermAll)
}
