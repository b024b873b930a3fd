package file

import (
	"context"
	"os"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// ChangeReadOnly implements block.ReadOnlyChanger: a file opened read-only
// is opened again read-write (and keeps its image locks); going read-only
// keeps the descriptor, since nothing writes through a read-only node.
func (d *file) ChangeReadOnly(ctx context.Context, ro bool) (undo func(), err error) {
	if ro || d.writable {
		return func() {}, nil
	}
	flags := os.O_RDWR | syscall.O_CLOEXEC
	if d.direct {
		flags |= syscall.O_DIRECT
	}
	f, err := os.OpenFile(d.name, flags, 0)
	if err != nil {
		return nil, block.Errorf(errClass(err), "Could not reopen file: %s", block.Strerror(err))
	}
	old := d.f
	d.mu.Lock()
	if d.locking {
		if err := applyLocks(int(f.Fd()), d.perm, d.shared); err != nil {
			d.mu.Unlock()
			f.Close()
			return nil, block.Errorf(block.ErrPermission, "Could not reopen file: %s", block.Strerror(err))
		}
	}
	d.f, d.fd, d.writable = f, int(f.Fd()), true
	d.mu.Unlock()
	old.Close()
	// Undo keeps the new descriptor: a read-write descriptor serves a
	// read-only node as well.
	return func() {}, nil
}
