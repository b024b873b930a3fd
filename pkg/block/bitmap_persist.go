package block

// A persistent bitmap is one a format driver (qcow2) stores in its image
// when the node closes or goes read-only, and loads again when the image
// is opened. An inconsistent one was found marked in use in the image
// (whoever had it open did not store it): its bits cannot be trusted, so
// it is not recording and QMP commands other than remove refuse it, but
// it stays in the image until removed. The driver reads both flags from
// its close path while QMP may change them: they are atomic.

// Persistent reports whether the bitmap is stored in the node's image.
func (b *DirtyBitmap) Persistent() bool { return b.persistent.Load() }

// SetPersistent marks the bitmap as stored in the node's image, or not.
func (b *DirtyBitmap) SetPersistent(on bool) { b.persistent.Store(on) }

// Inconsistent reports whether the bitmap was loaded marked in use.
func (b *DirtyBitmap) Inconsistent() bool { return b.inconsistent.Load() }

// SetInconsistent marks the bitmap as loaded marked in use, or not.
func (b *DirtyBitmap) SetInconsistent(on bool) { b.inconsistent.Store(on) }
