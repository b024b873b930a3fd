package chardev

import (
	"context"
	"fmt"

	"github.com/blockd/blockd/pkg/qmp"
)

// Handlers returns the chardev commands by name.
func (r *Registry) Handlers() map[string]qmp.Handler {
	return map[string]qmp.Handler{
		"chardev-add":            qmp.Command(r.chardevAdd),
		"chardev-change":         qmp.Command(r.chardevChange),
		"chardev-remove":         qmp.Command(r.chardevRemove),
		"chardev-send-break":     qmp.Command(r.chardevSendBreak),
		"query-chardev":          qmp.Command(r.queryChardev),
		"query-chardev-backends": qmp.Command(r.queryChardevBackends),
		"ringbuf-write":          qmp.Command(r.ringbufWrite),
		"ringbuf-read":           qmp.Command(r.ringbufRead),
	}
}

// AddArgs are chardev-add's and chardev-change's arguments.
type AddArgs struct {
	ID      string  `json:"id"`
	Backend Backend `json:"backend"`
}

// AddReturn is ChardevReturn; pty is set only by the pty backend, which
// blockd lacks.
type AddReturn struct {
	Pty *string `json:"pty,omitempty"`
}

// IDArgs are chardev-remove's and chardev-send-break's arguments.
type IDArgs struct {
	ID string `json:"id"`
}

// Info is ChardevInfo.
type Info struct {
	Label        string `json:"label"`
	Filename     string `json:"filename"`
	FrontendOpen bool   `json:"frontend-open"`
}

// BackendInfo is ChardevBackendInfo.
type BackendInfo struct {
	Name string `json:"name"`
}

// RingbufWriteArgs are ringbuf-write's arguments.
type RingbufWriteArgs struct {
	Device string      `json:"device"`
	Data   string      `json:"data"`
	Format *DataFormat `json:"format,omitempty"`
}

// RingbufReadArgs are ringbuf-read's arguments.
type RingbufReadArgs struct {
	Device string      `json:"device"`
	Size   int64       `json:"size"`
	Format *DataFormat `json:"format,omitempty"`
}

type empty struct{}

func (r *Registry) chardevAdd(ctx context.Context, a *AddArgs) (AddReturn, error) {
	if r.Get(a.ID) != nil {
		return AddReturn{}, fmt.Errorf("Chardev with id '%s' already exists", a.ID)
	}
	return AddReturn{}, r.add(ctx, a)
}

// add opens and registers a chardev whose id is free.
func (r *Registry) add(ctx context.Context, a *AddArgs) error {
	open, err := r.plan(a.Backend)
	if err == nil {
		var d *Device
		if d, err = r.open(ctx, a.ID, a.Backend, open); err == nil {
			if err = r.insert(d); err != nil {
				d.close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("Failed to add chardev '%s': %w", a.ID, err)
	}
	return nil
}

// chardevChange replaces a chardev nothing uses, as qsd does: the old
// one goes, then the new one is added.
func (r *Registry) chardevChange(ctx context.Context, a *AddArgs) (AddReturn, error) {
	d := r.Get(a.ID)
	if d == nil {
		return AddReturn{}, fmt.Errorf("Chardev '%s' does not exist", a.ID)
	}
	if d.Busy() {
		// compat(qsd-7.2): a monitor cannot move to another chardev.
		return AddReturn{}, fmt.Errorf("Chardev user does not support chardev hotswap")
	}
	// qsd removes the old chardev before it checks the new options, and
	// a bad option then loses it; blockd checks them first.
	if _, err := r.plan(a.Backend); err != nil {
		return AddReturn{}, fmt.Errorf("Failed to add chardev '%s': %w", a.ID, err)
	}
	r.remove(d)
	return AddReturn{}, r.add(ctx, a)
}

func (r *Registry) chardevRemove(ctx context.Context, a *IDArgs) (empty, error) {
	d := r.Get(a.ID)
	switch {
	case d == nil:
		return empty{}, fmt.Errorf("Chardev '%s' not found", a.ID)
	case d.Busy():
		return empty{}, fmt.Errorf("Chardev '%s' is busy", a.ID)
	}
	r.remove(d)
	return empty{}, nil
}

// chardevSendBreak sends a break to the chardev's frontend; a monitor
// ignores breaks, and so does a chardev without a frontend.
func (r *Registry) chardevSendBreak(ctx context.Context, a *IDArgs) (empty, error) {
	if r.Get(a.ID) == nil {
		return empty{}, fmt.Errorf("Chardev '%s' not found", a.ID)
	}
	return empty{}, nil
}

func (r *Registry) queryChardev(ctx context.Context, _ *struct{}) ([]Info, error) {
	devs := r.List()
	out := make([]Info, len(devs))
	for i, d := range devs {
		out[i] = Info{Label: d.label, Filename: d.Filename(), FrontendOpen: d.Busy()}
	}
	return out, nil
}

func (r *Registry) queryChardevBackends(ctx context.Context, _ *struct{}) ([]BackendInfo, error) {
	out := make([]BackendInfo, len(Backends))
	for i, k := range Backends {
		out[i] = BackendInfo{Name: string(k)}
	}
	return out, nil
}

// ringbuf returns the ring buffer device names.
func (r *Registry) ringbuf(device string) (*ringbuf, error) {
	d := r.Get(device)
	if d == nil {
		return nil, fmt.Errorf("Device '%s' not found", device)
	}
	rb, ok := d.be.(*ringbuf)
	if !ok {
		return nil, fmt.Errorf("%s is not a ringbuf device", device)
	}
	return rb, nil
}

func (r *Registry) ringbufWrite(ctx context.Context, a *RingbufWriteArgs) (empty, error) {
	rb, err := r.ringbuf(a.Device)
	if err != nil {
		return empty{}, err
	}
	p, err := encodeWrite(a.Data, a.Format)
	if err != nil {
		return empty{}, err
	}
	rb.write(p)
	return empty{}, nil
}

func (r *Registry) ringbufRead(ctx context.Context, a *RingbufReadArgs) (string, error) {
	rb, err := r.ringbuf(a.Device)
	if err != nil {
		return "", err
	}
	if a.Size <= 0 {
		return "", fmt.Errorf("size must be greater than zero")
	}
	return decodeRead(rb.read(a.Size), a.Format), nil
}
