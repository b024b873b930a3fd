package blockdev

import (
	"context"
	"slices"
	"strings"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/chardev"
	"github.com/blockd/blockd/pkg/filters/throttle"
	"github.com/blockd/blockd/pkg/qmp"
)

// qomProperty is ObjectPropertyInfo.
type qomProperty = chardev.Property

// qomType is one QOM type blockd has, with qsd 7.2's name, parent and
// properties.
type qomType struct {
	name, parent string
	abstract     bool
	interfaces   []string
	props        []qomProperty // its own, after its parent's
}

// qomTypes are the types of what blockd creates (objects and chardevs),
// their parents and the interfaces they implement, as qsd reports them.
func qomTypes() []qomType {
	throttleProps := []qomProperty{{Name: "limits", Type: "ThrottleLimits"}}
	for _, n := range throttle.LegacyPropertyNames() {
		throttleProps = append(throttleProps, qomProperty{Name: n, Type: "int"})
	}
	types := []qomType{
		{name: "object", abstract: true, props: []qomProperty{{Name: "type", Type: "string"}}},
		{name: "interface", abstract: true},
		{name: "user-creatable", parent: "interface", abstract: true},
		{name: "container", parent: "object"},
		{name: "event-loop-base", parent: "object", abstract: true, interfaces: []string{"user-creatable"},
			props: intProps("thread-pool-min", "aio-max-batch", "thread-pool-max")},
		{name: "iothread", parent: "event-loop-base", props: intProps("poll-max-ns", "poll-grow", "poll-shrink")},
		{name: "throttle-group", parent: "object", interfaces: []string{"user-creatable"}, props: throttleProps},
	}
	for _, t := range chardev.QOMTypes {
		types = append(types, qomType{name: t.Name, parent: t.Parent, abstract: t.Abstract, props: t.Properties})
	}
	return types
}

func intProps(names ...string) []qomProperty {
	out := make([]qomProperty, len(names))
	for i, n := range names {
		out[i] = qomProperty{Name: n, Type: "int"}
	}
	return out
}

func findType(types []qomType, name string) *qomType {
	for i := range types {
		if types[i].name == name {
			return &types[i]
		}
	}
	return nil
}

// ancestry is name, its parents and every interface any of them
// implements, with those interfaces' parents.
func ancestry(types []qomType, name string) []string {
	var out []string
	for t := findType(types, name); t != nil; t = findType(types, t.parent) {
		out = append(out, t.name)
		for _, i := range t.interfaces {
			out = append(out, ancestry(types, i)...)
		}
	}
	return out
}

// typeProperties are the properties of an instance of name: its
// ancestors' first.
func typeProperties(types []qomType, name string) []qomProperty {
	var chain []*qomType
	for t := findType(types, name); t != nil; t = findType(types, t.parent) {
		chain = append(chain, t)
	}
	var out []qomProperty
	for i := len(chain) - 1; i >= 0; i-- {
		out = append(out, chain[i].props...)
	}
	return out
}

// isInterface reports whether name is an interface type.
func isInterface(types []qomType, name string) bool {
	a := ancestry(types, name)
	return len(a) > 0 && a[len(a)-1] == "interface"
}

// ObjectTypeInfo is qom-list-types' element.
type ObjectTypeInfo struct {
	Name     string `json:"name"`
	Abstract bool   `json:"abstract,omitempty"`
	Parent   string `json:"parent,omitempty"`
}

type qomListTypesArgs struct {
	Implements *string `json:"implements,omitempty"`
	Abstract   *bool   `json:"abstract,omitempty"`
}

// qomListTypes lists blockd's types, sorted by name (qsd lists them in
// hash-table order).
func (s *Server) qomListTypes(ctx context.Context, a *qomListTypesArgs) ([]ObjectTypeInfo, error) {
	types := qomTypes()
	out := []ObjectTypeInfo{}
	for _, t := range types {
		if t.abstract && (a.Abstract == nil || !*a.Abstract) {
			continue
		}
		if a.Implements != nil && !slices.Contains(ancestry(types, t.name), *a.Implements) {
			continue
		}
		out = append(out, ObjectTypeInfo{Name: t.name, Abstract: t.abstract, Parent: t.parent})
	}
	slices.SortFunc(out, func(x, y ObjectTypeInfo) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

type qomListPropertiesArgs struct {
	Typename string `json:"typename"`
}

func (s *Server) qomListProperties(ctx context.Context, a *qomListPropertiesArgs) ([]qomProperty, error) {
	types := qomTypes()
	switch {
	case findType(types, a.Typename) == nil:
		// compat(qsd-7.2): also for the types qsd has and blockd lacks.
		return nil, qmp.Classf(qmp.DeviceNotFound, "Class '%s' not found", a.Typename)
	case isInterface(types, a.Typename):
		return nil, qmp.Errorf("Parameter 'typename' expects a QOM type")
	}
	return typeProperties(types, a.Typename), nil
}

type qomListArgs struct {
	Path string `json:"path"`
}

// qomNode is what a QOM path names in blockd's part of the tree: the
// root, the /objects or /chardevs container, an object or a chardev.
type qomNode struct {
	typ      string
	children []qomProperty // a container's
	obj      block.Object
	dev      *chardev.Device
}

// containerNames are the containers under the root.
var containerNames = []string{"objects", "chardevs"}

// resolveQOM resolves a QOM path: absolute, or a partial path (a name
// alone) that names exactly one thing. Call under the graph lock.
func (s *Server) resolveQOM(path string) (*qomNode, error) {
	switch path {
	case "":
		return nil, qmp.Errorf("Path '' is ambiguous")
	case "/":
		n := &qomNode{typ: "container"}
		for _, c := range containerNames {
			n.children = append(n.children, qomProperty{Name: c, Type: "child<container>"})
		}
		return n, nil
	case "/objects":
		return s.objectsContainer(), nil
	case "/chardevs":
		return s.chardevsContainer(), nil
	}
	if id, ok := strings.CutPrefix(path, "/objects/"); ok {
		if obj := s.G.Object(id); obj != nil {
			return &qomNode{typ: obj.QOMType(), obj: obj}, nil
		}
	} else if id, ok := strings.CutPrefix(path, "/chardevs/"); ok {
		if d := s.Chardevs.Get(id); d != nil {
			return &qomNode{typ: d.QOMType(), dev: d}, nil
		}
	} else if !strings.HasPrefix(path, "/") {
		return s.resolvePartial(path)
	}
	return nil, qmp.Classf(qmp.DeviceNotFound, "Device '%s' not found", path)
}

// resolvePartial finds name anywhere in the tree.
func (s *Server) resolvePartial(name string) (*qomNode, error) {
	var found []*qomNode
	if slices.Contains(containerNames, name) {
		n, _ := s.resolveQOM("/" + name)
		found = append(found, n)
	}
	if obj := s.G.Object(name); obj != nil {
		found = append(found, &qomNode{typ: obj.QOMType(), obj: obj})
	}
	if d := s.Chardevs.Get(name); d != nil {
		found = append(found, &qomNode{typ: d.QOMType(), dev: d})
	}
	switch len(found) {
	case 0:
		return nil, qmp.Classf(qmp.DeviceNotFound, "Device '%s' not found", name)
	case 1:
		return found[0], nil
	}
	return nil, qmp.Errorf("Path '%s' is ambiguous", name)
}

func (s *Server) objectsContainer() *qomNode {
	ids := make([]string, 0, len(s.G.Objects()))
	for id := range s.G.Objects() {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	n := &qomNode{typ: "container"}
	for _, id := range ids {
		n.children = append(n.children, qomProperty{Name: id, Type: "child<" + s.G.Object(id).QOMType() + ">"})
	}
	return n
}

func (s *Server) chardevsContainer() *qomNode {
	n := &qomNode{typ: "container"}
	for _, d := range s.Chardevs.List() {
		n.children = append(n.children, qomProperty{Name: d.Label(), Type: "child<" + d.QOMType() + ">"})
	}
	return n
}

// qomList is qom-list over the part of QOM's tree blockd has: the root,
// the /objects and /chardevs containers and what is in them.
func (s *Server) qomList(ctx context.Context, a *qomListArgs) ([]qomProperty, error) {
	s.G.Lock()
	defer s.G.Unlock()
	n, err := s.resolveQOM(a.Path)
	if err != nil {
		return nil, err
	}
	return append(typeProperties(qomTypes(), n.typ), n.children...), nil
}
