//go:build !linux

package kpipe

import "errors"

// Pipe is a kernel pipe for the splice paths; there are none here.
type Pipe struct {
	R, W int
	Size int
}

// New fails: no splice on this platform.
func New(size int) (*Pipe, error) { return nil, errors.New("no splice on this platform") }

// Close does nothing.
func (p *Pipe) Close() {}
