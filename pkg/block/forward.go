package block

import "context"

// Forward implements every Impl method by calling C. Embed it only in a
// filter whose one filtered child presents exactly the node's data
// (RoleFiltered). A driver that remaps offsets or changes data must
// implement Impl itself, so that an operation added later cannot slip
// through it unchanged.
type Forward struct{ C *Child }

// Caps are the child's: a filter never hides what the node below can do.
func (f Forward) Caps() Caps { return f.C.Node().Caps() }

func (f Forward) Size(ctx context.Context) (int64, error) { return f.C.Size(), nil }

func (f Forward) ReadAt(ctx context.Context, p []byte, off int64, fl Flags) error {
	return f.C.ReadAt(ctx, p, off, fl)
}

func (f Forward) WriteAt(ctx context.Context, p []byte, off int64, fl Flags) error {
	return f.C.WriteAt(ctx, p, off, fl)
}

func (f Forward) Zero(ctx context.Context, off, n int64, fl Flags) error {
	return f.C.Zero(ctx, off, n, fl)
}

func (f Forward) Discard(ctx context.Context, off, n int64) error {
	return f.C.Discard(ctx, off, n)
}

func (f Forward) Flush(ctx context.Context) error { return f.C.Flush(ctx) }

// BlockStatus defers to the child: the filter's status is the child's.
func (f Forward) BlockStatus(ctx context.Context, off, n int64) (Extent, error) {
	return Extent{Len: n, Status: StatusRecurse, Offset: off, Child: f.C}, nil
}

func (f Forward) Truncate(ctx context.Context, size int64, exact bool) error {
	return f.C.Truncate(ctx, size, exact)
}

func (f Forward) Close() error { return nil }
