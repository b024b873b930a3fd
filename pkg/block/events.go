package block

import (
	"maps"
	"reflect"
	"sync"
)

// Emitter publishes QMP events; pkg/qmp's server implements it. Drivers
// emit through their node's graph (QUORUM_FAILURE, BLOCK_IMAGE_CORRUPTED).
type Emitter interface {
	Emit(event string, data any)
}

type emitterBox struct{ e Emitter }

// SetEmitter sets where the graph's events go. Until it is called they
// are dropped.
func (g *Graph) SetEmitter(e Emitter) { g.emitter.Store(&emitterBox{e}) }

// Emit publishes an event, if an emitter is set.
func (g *Graph) Emit(event string, data any) {
	if b := g.emitter.Load(); b != nil && b.e != nil {
		b.e.Emit(event, data)
	}
}

// events is the registry of declared events: name → Go type of the data.
var events = struct {
	sync.RWMutex
	m map[string]reflect.Type
}{m: map[string]reflect.Type{}}

// DeclareEvent records that the event name is emitted with data of the
// type of data (a struct value, encoded with encoding/json). Packages that
// emit an event declare it at init, next to the data type, so that
// query-qmp-schema lists it (pkg/blockdev hands the registry to pkg/qmp).
func DeclareEvent(name string, data any) {
	events.Lock()
	defer events.Unlock()
	events.m[name] = reflect.TypeOf(data)
}

// DeclaredEvents returns every declared event and its data type.
func DeclaredEvents() map[string]reflect.Type {
	events.RLock()
	defer events.RUnlock()
	return maps.Clone(events.m)
}
