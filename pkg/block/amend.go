package block

import "context"

// Amender is implemented by format drivers that can change an open
// image's creation options in place (x-blockdev-amend). opts is the
// driver's own variant of QMP's BlockdevAmendOptions, as the command
// decoded it; force allows changes the driver would otherwise refuse as
// dangerous. It runs in an amend job, outside the graph lock.
type Amender interface {
	Amend(ctx context.Context, opts any, force bool) error
}
