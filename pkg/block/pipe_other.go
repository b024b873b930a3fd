//go:build !linux

package block

import "errors"

// Pipe is a kernel pipe for the splice paths; there are none here.
type Pipe struct {
	R, W int
	Size int
}

// NewPipe fails: no splice on this platform.
func NewPipe(size int) (*Pipe, error) { return nil, errors.New("no splice on this platform") }

// Close does nothing.
func (p *Pipe) Close() {}
