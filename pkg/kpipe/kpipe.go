// Package kpipe makes and keeps the kernel pipes of the splice paths:
// the NBD server assembles read replies in them, and jobs move data from
// a source's page cache to a target (block.Splicer, block.SpliceWriter)
// through them. It imports nothing of ours, so that both sides of the
// dependency rules (pkg/nbd, pkg/block's users) can share it.
package kpipe

// Pool keeps up to a fixed number of empty pipes of one size, made when
// first needed: one per request or copy in flight, so it never grows
// past what its user holds at once.
type Pool struct {
	free chan *Pipe
	size int
}

// NewPool keeps up to keep pipes of about size bytes each.
func NewPool(keep, size int) *Pool {
	return &Pool{free: make(chan *Pipe, max(keep, 1)), size: size}
}

// Get returns an empty pipe, or nil when none can be made (no splice on
// this platform, out of descriptors).
func (pp *Pool) Get() *Pipe {
	select {
	case p := <-pp.free:
		return p
	default:
	}
	p, err := New(pp.size)
	if err != nil {
		return nil
	}
	return p
}

// Put keeps an empty pipe (or closes it when the pool is full). A pipe
// that may hold bytes must be closed instead.
func (pp *Pool) Put(p *Pipe) {
	select {
	case pp.free <- p:
	default:
		p.Close()
	}
}

// Close closes the pipes kept.
func (pp *Pool) Close() {
	for {
		select {
		case p := <-pp.free:
			p.Close()
		default:
			return
		}
	}
}
