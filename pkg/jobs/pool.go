package jobs

import "sync"

// Pool runs a job's copies, each in its own goroutine with a buffer of
// its own, at most a fixed number at once: the memory a copying job uses
// is bounded by the pool. While a pool is open, the job's Yield waits for
// its copies to finish before it parks the job (a paused job has nothing
// in flight), so copies must not wait for the job.
type Pool struct {
	j    *Job
	size int
	bufs chan []byte

	mu       sync.Mutex
	cond     sync.Cond
	inflight int // guarded by mu
}

// NewPool opens a pool of n copies of up to size bytes for j.
func NewPool(j *Job, n int, size int64) *Pool {
	p := &Pool{j: j, size: int(size), bufs: make(chan []byte, n)}
	p.cond.L = &p.mu
	for i := 0; i < n; i++ {
		p.bufs <- nil // allocated on first use, then reused
	}
	j.SetQuiesce(p.WaitIdle)
	return p
}

// Go runs fn in its own goroutine with a buffer of the pool's size, once
// one is free (it blocks until then).
func (p *Pool) Go(fn func(buf []byte)) {
	buf := <-p.bufs
	if len(buf) < p.size {
		buf = make([]byte, p.size)
	}
	p.mu.Lock()
	p.inflight++
	p.mu.Unlock()
	go func() {
		fn(buf)
		p.bufs <- buf
		p.mu.Lock()
		p.inflight--
		p.cond.Broadcast()
		p.mu.Unlock()
	}()
}

// WaitIdle waits until no copy is running.
func (p *Pool) WaitIdle() {
	p.mu.Lock()
	for p.inflight > 0 {
		p.cond.Wait()
	}
	p.mu.Unlock()
}

// Close waits for the copies and detaches the pool from the job.
func (p *Pool) Close() {
	p.WaitIdle()
	p.j.SetQuiesce(nil)
}
