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
	if err := b.Create(ctx); err != nil {
		return err
	}
	j.SetProgress(1, 1)
	return nil
}
