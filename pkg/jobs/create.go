package jobs

import "context"

// CreateBody is the body of a blockdev-create job: one call that makes an
// image. Progress goes from 0/1 to 1/1.
type CreateBody struct {
	Create func(ctx context.Context) error
}

// Run implements Body.
func (b *CreateBody) Run(ctx context.Context, j *Job) error {
	j.SetProgress(0, 1)
	err := b.Create(ctx)
	// compat(qsd-7.2): a create job reports 1/1 however it ended.
	j.SetProgress(1, 1)
	return err
}
