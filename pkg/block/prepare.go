package block

import (
	"context"
	"encoding/json"
	"sync"
)

// Some drivers wait on the network in open (rbd connects to a Ceph
// cluster, which takes as long as the cluster's mount timeout when it is
// down). Opens run under the graph lock, which would stop every other
// client's graph commands for that long. Such a driver registers a
// PrepareFunc: blockdev-add calls Prepare before it takes the graph lock,
// the slow part runs there, and the driver's open claims the result with
// Prepared. A node opened any other way (a reopen, a job's new image)
// simply does the slow part in open.

// PrepareFunc does the slow part of opening a node from its raw options
// (decoded leniently: a mistake in them is left for open to report). It
// returns the key open will ask for, the prepared value or the error open
// should report, and release, which frees a value open never claimed.
// ok=false: nothing to prepare for these options.
type PrepareFunc func(ctx context.Context, raw json.RawMessage) (key string, v any, release func(), err error, ok bool)

// SetPrepare registers d's PrepareFunc.
func (d *Driver) SetPrepare(f PrepareFunc) { d.prepare = f }

type prepared struct {
	v       any
	err     error
	release func()
}

type preparedSet struct {
	mu sync.Mutex
	m  map[string]*prepared // guarded by mu
}

type preparedKey struct{}

// Prepare runs the PrepareFuncs of the nodes that raw (blockdev-add's
// options) describes, nested ones included, without any lock of ours,
// inside unblocked (the QMP server's qmp.Unblocked, so that other
// commands run meanwhile; nil: directly). It returns the context to open
// them with and a function that releases what no open claimed; call it
// once the open is over.
func Prepare(ctx context.Context, raw json.RawMessage, unblocked func(context.Context, func())) (context.Context, func()) {
	var todo []toPrepare
	walkPrepare(raw, &todo)
	if len(todo) == 0 {
		return ctx, func() {}
	}
	set := &preparedSet{m: map[string]*prepared{}}
	run := func() {
		for _, p := range todo {
			if key, v, release, err, ok := p.f(ctx, p.raw); ok {
				if old := set.m[key]; old != nil && old.release != nil {
					old.release()
				}
				set.m[key] = &prepared{v: v, err: err, release: release}
			}
		}
	}
	if unblocked != nil {
		unblocked(ctx, run)
	} else {
		run()
	}
	return context.WithValue(ctx, preparedKey{}, set), func() {
		set.mu.Lock()
		defer set.mu.Unlock()
		for k, p := range set.m {
			if p.release != nil {
				p.release()
			}
			delete(set.m, k)
		}
	}
}

type toPrepare struct {
	f   PrepareFunc
	raw json.RawMessage
}

// walkPrepare finds every JSON object in raw that names a driver with a
// PrepareFunc.
func walkPrepare(raw json.RawMessage, todo *[]toPrepare) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) == nil {
		if d, ok := obj["driver"]; ok {
			var name string
			if json.Unmarshal(d, &name) == nil {
				if drv := LookupDriver(name); drv != nil && drv.prepare != nil {
					*todo = append(*todo, toPrepare{drv.prepare, raw})
				}
			}
		}
		for _, v := range obj {
			walkPrepare(v, todo)
		}
		return
	}
	var arr []json.RawMessage
	if json.Unmarshal(raw, &arr) == nil {
		for _, v := range arr {
			walkPrepare(v, todo)
		}
	}
}

// Prepared claims what Prepare made for key: the value (now the caller's
// to release) or the error to report. ok=false: nothing was prepared.
func Prepared(ctx context.Context, key string) (v any, err error, ok bool) {
	set, _ := ctx.Value(preparedKey{}).(*preparedSet)
	if set == nil {
		return nil, nil, false
	}
	set.mu.Lock()
	defer set.mu.Unlock()
	p := set.m[key]
	if p == nil {
		return nil, nil, false
	}
	delete(set.m, key)
	return p.v, p.err, true
}
