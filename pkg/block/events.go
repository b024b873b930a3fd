package block

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
