package block

import "fmt"

// Object is a user-creatable object (QMP object-add), such as a
// throttle group. Drivers find objects by id while opening.
type Object interface {
	// QOMType is the object's type name ("throttle-group").
	QOMType() string
	// InUse reports whether a node uses the object.
	InUse() bool
}

// AddObject registers obj under id. Call under the graph lock.
func (g *Graph) AddObject(id string, obj Object) error {
	if g.objects == nil {
		g.objects = map[string]Object{}
	}
	if _, dup := g.objects[id]; dup {
		// compat(qsd-7.2): QOM's wording for a duplicate id.
		return fmt.Errorf("attempt to add duplicate property '%s' to object (type 'container')", id)
	}
	g.objects[id] = obj
	return nil
}

// Object returns the object with id, or nil. Call under the graph lock.
func (g *Graph) Object(id string) Object { return g.objects[id] }

// Objects lists the objects by id. Call under the graph lock.
func (g *Graph) Objects() map[string]Object { return g.objects }

// DelObject removes an object that nothing uses. Call under the graph lock.
func (g *Graph) DelObject(id string) error {
	obj, ok := g.objects[id]
	if !ok {
		return Errorf(ErrNotFound, "object '%s' not found", id)
	}
	if obj.InUse() {
		return Errorf(ErrBusy, "object '%s' is in use, can not be deleted", id)
	}
	delete(g.objects, id)
	return nil
}
