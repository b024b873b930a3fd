//go:build ceph

package rbd_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/blockd/blockd/internal/cephtest"
	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/rbd"
)

// One cluster for the package's tests: starting one takes two seconds.
var (
	clusterOnce sync.Once
	clusterRef  *cephtest.Cluster
	clusterErr  error
	clusterDir  string
	imageSeq    atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if clusterRef != nil {
		clusterRef.Stop()
	}
	if clusterDir != "" {
		os.RemoveAll(clusterDir)
	}
	os.Exit(code)
}

func cluster(t *testing.T) *cephtest.Cluster {
	t.Helper()
	clusterOnce.Do(func() {
		if why := cephtest.Available(); why != "" {
			clusterErr = fmt.Errorf("%w: %s", cephtest.ErrMissing, why)
			return
		}
		clusterDir, clusterErr = os.MkdirTemp("", "rbdtest")
		if clusterErr == nil {
			clusterRef, clusterErr = cephtest.Start(clusterDir)
		}
	})
	if clusterErr != nil {
		t.Skip("no Ceph cluster: ", clusterErr)
	}
	return clusterRef
}

// newImage makes a fresh image and returns its options.
func newImage(t *testing.T, c *cephtest.Cluster, size string) string {
	t.Helper()
	name := fmt.Sprintf("img%d", imageSeq.Add(1))
	if _, err := c.RBD("create", "--size", size, cephtest.Pool+"/"+name); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`"pool":%q,"image":%q,"conf":%q`, cephtest.Pool, name, c.Conf)
}

func TestRBDDriver(t *testing.T) {
	c := cluster(t)
	blocktest.RunDriverSuite(t, blocktest.DriverCase{
		Open: func(t *testing.T, g *block.Graph) *block.Node {
			return blocktest.Open(t, g, `{"driver":"rbd","node-name":"dut",`+newImage(t, c, "8M")+`}`)
		},
		Stores: true, ZeroReads: true, Resizable: true,
	})
}

// TestRBDBlockStatus: block status comes from rbd's object map, whole
// objects at a time, so that jobs skip what was never written.
func TestRBDBlockStatus(t *testing.T) {
	c := cluster(t)
	ctx := t.Context()
	g := blocktest.NewGraph()
	n := blocktest.Open(t, g, `{"driver":"rbd","node-name":"dut",`+newImage(t, c, "16M")+`}`)
	r := blocktest.NewRoot(t, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
	const obj = 4 << 20
	if err := r.WriteAt(ctx, []byte("data"), 2*obj+100, 0); err != nil {
		t.Fatal(err)
	}
	type ext struct {
		off, len int64
		data     bool
	}
	for _, want := range []ext{
		{0, 2 * obj, false},
		{100, 2*obj - 100, false},
		{2 * obj, obj, true},
		{2*obj + 4096, obj - 4096, true},
		{3 * obj, obj, false},
	} {
		e, err := r.Child().BlockStatus(ctx, want.off, 4*obj-want.off)
		if err != nil {
			t.Fatal(err)
		}
		data := e.Status&block.StatusData != 0
		if e.Len != want.len || data != want.data || data == (e.Status&block.StatusZero != 0) {
			t.Errorf("status at %d: len %d status %#x, want len %d data %v", want.off, e.Len, e.Status, want.len, want.data)
		}
	}
}

// TestRBDErrors: what a user gets for what cannot be opened, in qsd's
// words.
func TestRBDErrors(t *testing.T) {
	c := cluster(t)
	img := newImage(t, c, "4M")
	if _, err := c.RBD("snap", "create", cephtest.Pool+"/img"+fmt.Sprint(imageSeq.Load())+"@s1"); err != nil {
		t.Fatal(err)
	}
	g := blocktest.NewGraph()
	conf := fmt.Sprintf(`"conf":%q`, c.Conf)
	for _, tt := range []struct{ opts, want string }{
		{`"pool":"nopool","image":"x",` + conf, "error opening pool nopool: No such file or directory"},
		{`"pool":"rbd","image":"noimage",` + conf, "error reading header from noimage: No such file or directory"},
		{`"pool":"rbd","image":"x","conf":"/nonexistent.conf"`, "error reading conf file /nonexistent.conf: No such file or directory"},
		{`"pool":"rbd","namespace":"ns","image":"x",` + conf, "namespace 'ns' does not exist"},
		{img + `,"snapshot":"s1"`, "rbd snapshots are read-only"},
		{img + `,"snapshot":"nosnap","read-only":true`, "error reading header from img" + fmt.Sprint(imageSeq.Load()) + ": No such file or directory"},
		{img + `,"encrypt":{"format":"luks","key-secret":"s"}`, "blockd does not support encrypted rbd images yet (encrypt)"},
	} {
		if _, err := blocktest.TryOpen(g, `{"driver":"rbd","node-name":"x",`+tt.opts+`}`); err == nil || err.Error() != tt.want {
			t.Errorf("%s: %v, want %q", tt.opts, err, tt.want)
		}
	}
	// A snapshot opens read-only and reads.
	n := blocktest.Open(t, g, `{"driver":"rbd","node-name":"snap",`+img+`,"snapshot":"s1","read-only":true}`)
	if !n.ReadOnly() {
		t.Error("snapshot node is not read-only")
	}
}

// TestRBDManyInFlight: more requests at once than the poller collects in
// one batch, each with its own data; what the cluster then holds is read
// back with the rbd tool.
func TestRBDManyInFlight(t *testing.T) {
	c := cluster(t)
	ctx := t.Context()
	g := blocktest.NewGraph()
	opts := newImage(t, c, "4M")
	n := blocktest.Open(t, g, `{"driver":"rbd","node-name":"dut",`+opts+`}`)
	r := blocktest.NewRoot(t, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
	const reqs, bs = 200, 4096
	want := make([]byte, reqs*bs)
	errs := make(chan error, reqs)
	for i := range reqs {
		buf := want[i*bs : (i+1)*bs]
		for j := range buf {
			buf[j] = byte(i*7 + j)
		}
		go func() { errs <- r.WriteAt(ctx, buf, int64(i*bs), 0) }()
	}
	for range reqs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := range reqs {
		go func() {
			got := make([]byte, bs)
			err := r.ReadAt(ctx, got, int64(i*bs), 0)
			if err == nil && !bytes.Equal(got, want[i*bs:(i+1)*bs]) {
				err = fmt.Errorf("read at %d: wrong data", i*bs)
			}
			errs <- err
		}()
	}
	for range reqs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "export")
	name := fmt.Sprintf("img%d", imageSeq.Load())
	if _, err := c.RBD("export", "--no-progress", cephtest.Pool+"/"+name, out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(want)], want) {
		t.Error("rbd export differs from what was written")
	}
}
