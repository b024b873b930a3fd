//go:build ceph

package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/ceph/go-ceph/rados"
	cephrbd "github.com/ceph/go-ceph/rbd"

	"github.com/blockd/blockd/pkg/block"
)

func init() {
	d := block.Register("rbd", block.KindProtocol, open)
	d.SetPrepare(prepare)
	block.RegisterCreate("rbd", create)
}

// defaultMountTimeout replaces librados' default client_mount_timeout
// (300 s, which qsd waits when the cluster is down) unless the Ceph
// configuration sets its own: an open then fails within this time.
const defaultMountTimeout = "30"

// cluster is one connection to a cluster and an I/O context on the pool
// (and namespace) the image is in.
type cluster struct {
	conn *rados.Conn
	io   *rados.IOContext
}

func (c *cluster) close() {
	if c.io != nil {
		c.io.Destroy()
	}
	c.conn.Shutdown()
}

// strerror is the C library's sentence for a Ceph error.
func strerror(err error) string {
	var ce interface{ ErrorCode() int }
	if errors.As(err, &ce) {
		return block.Strerror(syscall.Errno(-ce.ErrorCode()))
	}
	return block.Strerror(err)
}

// connect connects to the cluster the options name and opens the pool,
// with qsd's messages for what fails. direct is cache.direct (it turns
// librbd's cache off, as in QEMU).
func connect(opts *Options, direct bool) (*cluster, error) {
	var conn *rados.Conn
	var err error
	if opts.User != nil {
		conn, err = rados.NewConnWithUser(*opts.User)
	} else {
		conn, err = rados.NewConn()
	}
	if err != nil {
		return nil, fmt.Errorf("error initializing: %s", strerror(err))
	}
	c := &cluster{conn: conn}
	fail := func(err error) (*cluster, error) {
		c.close()
		return nil, err
	}
	if opts.Conf != nil {
		if err := conn.ReadConfigFile(*opts.Conf); err != nil {
			return fail(fmt.Errorf("error reading conf file %s: %s", *opts.Conf, strerror(err)))
		}
	} else {
		_ = conn.ReadDefaultConfigFile() // there may be none: mon_host can come from server
	}
	if v, err := conn.GetConfigOption("client_mount_timeout"); err == nil && (v == "300" || v == "300.000000") {
		_ = conn.SetConfigOption("client_mount_timeout", defaultMountTimeout)
	}
	cache := "true"
	if direct {
		cache = "false"
	}
	_ = conn.SetConfigOption("rbd_cache", cache)
	if h := opts.monHost(); h != "" {
		if err := conn.SetConfigOption("mon_host", h); err != nil {
			return fail(fmt.Errorf("invalid server list %s: %s", h, strerror(err)))
		}
	}
	if m := opts.authModes(); m != "" {
		if err := conn.SetConfigOption("auth_client_required", m); err != nil {
			return fail(fmt.Errorf("Could not set 'auth_client_required': %s", strerror(err)))
		}
	}
	if err := conn.Connect(); err != nil {
		// compat(qsd-7.2): its words.
		return fail(fmt.Errorf("error connecting: %s", strerror(err)))
	}
	io, err := conn.OpenIOContext(opts.Pool)
	if err != nil {
		return fail(fmt.Errorf("error opening pool %s: %s", opts.Pool, strerror(err)))
	}
	c.io = io
	if opts.Namespace != nil && *opts.Namespace != "" {
		ok, err := cephrbd.NamespaceExists(io, *opts.Namespace)
		if err != nil {
			return fail(fmt.Errorf("error checking for the existence of namespace '%s': %s", *opts.Namespace, strerror(err)))
		}
		if !ok {
			return fail(fmt.Errorf("namespace '%s' does not exist", *opts.Namespace))
		}
		io.SetNamespace(*opts.Namespace)
	}
	return c, nil
}

// openImage opens the image on c, with qsd's message when that fails.
func (c *cluster) openImage(opts *Options, readOnly bool) (*image, error) {
	snap := ""
	if opts.Snapshot != nil {
		snap = *opts.Snapshot
	}
	img, err := openImage(c.io, opts.Image, snap, readOnly)
	if err != nil {
		return nil, fmt.Errorf("error reading header from %s: %s", opts.Image, strerror(err))
	}
	return img, nil
}

// preparedImage is what prepare hands to open: a connection and the
// image opened read-only or not.
type preparedImage struct {
	c        *cluster
	img      *image
	readOnly bool
}

func (p *preparedImage) release() {
	if p.img != nil {
		p.img.close()
	}
	p.c.close()
}

type prepareOpts struct {
	block.CommonOptions
	Options
}

func prepareKey(opts *Options, direct bool) string {
	b, _ := json.Marshal(struct {
		O      *Options
		Direct bool
	}{opts, direct})
	return string(b)
}

// prepare connects and opens the image before the graph lock is taken
// (see block.Prepare): with the cluster down this is what waits.
func prepare(ctx context.Context, raw json.RawMessage) (string, any, func(), error, bool) {
	var po prepareOpts
	if json.Unmarshal(raw, &po) != nil || po.Pool == "" || po.Image == "" {
		return "", nil, nil, nil, false
	}
	ro := po.ReadOnly != nil && *po.ReadOnly
	if po.check(ro) != nil {
		return "", nil, nil, nil, false // open refuses it without connecting
	}
	key := prepareKey(&po.Options, po.Direct())
	c, err := connect(&po.Options, po.Direct())
	if err != nil {
		return key, nil, nil, err, true
	}
	p := &preparedImage{c: c, readOnly: ro}
	if p.img, err = c.openImage(&po.Options, ro); err != nil {
		c.close()
		return key, nil, nil, err, true
	}
	return key, p, p.release, nil, true
}

// driver is an open rbd node.
type driver struct {
	c        *cluster
	img      *image
	opts     Options
	objSize  int64
	readOnly bool
	// fastDiff: block status can ask the object map (else all is data).
	fastDiff atomic.Bool
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	if err := opts.check(o.ReadOnly()); err != nil {
		return nil, err
	}
	common := o.Common()
	d := &driver{opts: *opts, readOnly: o.ReadOnly()}
	if v, err, ok := block.Prepared(ctx, prepareKey(opts, common.Direct())); ok {
		if err != nil {
			return nil, err
		}
		p := v.(*preparedImage)
		d.c, d.img = p.c, p.img
		if p.readOnly != d.readOnly {
			// Opened otherwise than the node needs (read-only came from
			// a parent): open the image again on the same connection.
			d.img.close()
			d.img = nil
		}
	} else {
		c, err := connect(opts, common.Direct())
		if err != nil {
			return nil, err
		}
		d.c = c
	}
	if d.img == nil {
		img, err := d.c.openImage(opts, d.readOnly)
		if err != nil {
			d.c.close()
			return nil, err
		}
		d.img = img
	}
	fail := func(err error) (block.Impl, error) {
		d.Close()
		return nil, err
	}
	var err error
	if d.objSize, err = d.img.objectSize(); err != nil {
		return fail(fmt.Errorf("error getting image info from %s: %s", opts.Image, strerror(err)))
	}
	if f, err := d.img.features(); err == nil && f&featureFastDiff != 0 {
		d.fastDiff.Store(true)
	}
	return d, nil
}

func (d *driver) Caps() block.Caps {
	return block.Caps{
		Zero:        true,
		Discard:     true,
		BlockStatus: true,
		Limits:      block.Limits{OptimalTransfer: d.objSize},
	}
}

func (d *driver) ioErr(op string, err error) error {
	return fmt.Errorf("rbd %s of %s/%s: %w", op, d.opts.Pool, d.opts.Image, err)
}

func (d *driver) Size(ctx context.Context) (int64, error) {
	s, err := d.img.size()
	if err != nil {
		return 0, d.ioErr("size", err)
	}
	return s, nil
}

func (d *driver) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	if err := d.img.read(p, off); err != nil {
		return d.ioErr("read", err)
	}
	return nil
}

func (d *driver) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	if err := d.img.write(p, off); err != nil {
		return d.ioErr("write", err)
	}
	return nil
}

func (d *driver) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	if err := d.img.writeZeroes(off, n, f&block.FlagMayUnmap == 0); err != nil {
		return d.ioErr("write zeroes", err)
	}
	return nil
}

func (d *driver) Discard(ctx context.Context, off, n int64) error {
	if err := d.img.discard(off, n); err != nil {
		return d.ioErr("discard", err)
	}
	return nil
}

func (d *driver) Flush(ctx context.Context) error {
	if err := d.img.flush(); err != nil {
		return d.ioErr("flush", err)
	}
	return nil
}

// BlockStatus asks librbd which objects exist (rbd diff against no
// snapshot, the whole object at a time, quick with the object map):
// what exists is data, the rest reads as zeroes. Images without a valid
// fast-diff map report data, as QEMU does.
func (d *driver) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	data := block.Extent{Len: n, Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: off}
	if !d.fastDiff.Load() {
		return data, nil
	}
	if fl, err := d.img.flags(); err != nil || fl&flagFastDiffInvalid != 0 {
		return data, nil
	}
	// Start at an object boundary: librbd before 17.2 reports wrong
	// offsets for a diff that starts inside an object.
	head := off % d.objSize
	start, end := off-head, off+n
	var (
		exists bool
		at     = start // the end of the first run found so far
		found  bool
	)
	err := d.img.diff(start, end-start, func(eoff, elen int64, ex bool) bool {
		if !ex {
			return true // a hole: like an unallocated range
		}
		if !found {
			found = true
			if eoff > start {
				at = eoff // unallocated up to here
				return false
			}
			exists, at = true, eoff+elen
			return true
		}
		if eoff > at {
			return false // allocated, then a gap
		}
		at = eoff + elen
		return true
	})
	if err != nil {
		return data, nil // cannot tell: data
	}
	if !found {
		at = end
	}
	l := min(at, end) - off
	if l <= 0 {
		return data, nil
	}
	if exists {
		return block.Extent{Len: l, Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: off}, nil
	}
	return block.Extent{Len: l, Status: block.StatusZero | block.StatusAllocated | block.StatusOffsetValid, Offset: off}, nil
}

func (d *driver) Truncate(ctx context.Context, size int64, exact bool) error {
	if err := d.img.resize(size); err != nil {
		return d.ioErr("resize", err)
	}
	return nil
}

func (d *driver) Close() error {
	var err error
	if d.img != nil {
		err = d.img.close()
		d.img = nil
	}
	if d.c != nil {
		d.c.close()
		d.c = nil
	}
	return err
}

// ImageInfo implements block.Infoer as qsd reports rbd nodes: the object
// size as cluster size, an empty rbd format-specific part, clean.
func (d *driver) ImageInfo(ctx context.Context) block.ImageInfo {
	clean := false
	return block.ImageInfo{
		ClusterSize:    d.objSize,
		DirtyFlag:      &clean,
		FormatSpecific: map[string]any{"type": "rbd", "data": map[string]any{}},
	}
}

// InternalSnapshots implements block.InternalSnapshotter: rbd snapshots,
// named by their name (it is their ID too), with the image size they
// were taken at as vm-state-size, as qsd lists them.
func (d *driver) InternalSnapshots(ctx context.Context) ([]block.InternalSnapshot, error) {
	list, err := d.img.snapshots()
	if err != nil {
		return nil, d.ioErr("snapshot list", err)
	}
	out := make([]block.InternalSnapshot, len(list))
	for i, s := range list {
		zero := uint64(0)
		out[i] = block.InternalSnapshot{ID: s.name, Name: s.name, VMStateSize: s.size, DiskSize: s.size, ICount: &zero}
	}
	return out, nil
}

// CreateInternalSnapshot makes an rbd snapshot; rbd snapshots have only
// a name.
func (d *driver) CreateInternalSnapshot(ctx context.Context, sn block.InternalSnapshot) (block.InternalSnapshot, error) {
	if sn.Name == "" {
		return sn, errors.New("rbd need a valid snapshot name")
	}
	if sn.ID != "" && sn.ID != sn.Name {
		return sn, errors.New("rbd snapshot id must be the same as its name")
	}
	if err := d.img.snapCreate(sn.Name); err != nil {
		return sn, fmt.Errorf("failed to create snap: %s", strerror(err))
	}
	sn.ID = sn.Name
	return sn, nil
}

// DeleteInternalSnapshot removes an rbd snapshot by name.
func (d *driver) DeleteInternalSnapshot(ctx context.Context, id, name string) error {
	if name == "" {
		return errors.New("rbd need a valid snapshot name")
	}
	if id != "" && id != name {
		return errors.New("rbd do not support snapshot id")
	}
	if err := d.img.snapRemove(name); err != nil {
		return fmt.Errorf("Failed to remove the snapshot: %s", strerror(err))
	}
	return nil
}
