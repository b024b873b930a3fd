package blockdev

import (
	"context"
	"slices"

	"github.com/blockd/blockd/pkg/filters/throttle"
	"github.com/blockd/blockd/pkg/qmp"
)

// qomProperty is ObjectPropertyInfo.
type qomProperty struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type qomListArgs struct {
	Path string `json:"path"`
}

// iothreadProperties are an iothread's properties as qsd lists them.
var iothreadProperties = []string{"thread-pool-min", "aio-max-batch", "thread-pool-max", "poll-max-ns", "poll-grow", "poll-shrink"}

// qomList is qom-list over the part of QOM's tree blockd has: the root,
// the /objects container and the objects in it (throttle groups and
// iothreads). An object may also be named by its id alone, the partial
// path QEMU resolves when it is unambiguous.
func (s *Server) qomList(ctx context.Context, a *qomListArgs) ([]qomProperty, error) {
	s.G.Lock()
	defer s.G.Unlock()
	props := []qomProperty{{"type", "string"}}
	switch a.Path {
	case "":
		return nil, qmp.Errorf("Path '' is ambiguous")
	case "/":
		return append(props, qomProperty{"objects", "child<container>"}), nil
	case "/objects":
		ids := make([]string, 0, len(s.G.Objects()))
		for id := range s.G.Objects() {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			props = append(props, qomProperty{id, "child<" + s.G.Object(id).QOMType() + ">"})
		}
		return props, nil
	}
	_, obj, err := s.object(a.Path)
	if err != nil {
		return nil, err
	}
	switch obj.(type) {
	case *throttle.Group:
		props = append(props, qomProperty{"limits", "ThrottleLimits"})
		for _, n := range throttle.LegacyPropertyNames() {
			props = append(props, qomProperty{n, "int"})
		}
	case *iothread:
		for _, n := range iothreadProperties {
			props = append(props, qomProperty{n, "int"})
		}
	}
	return props, nil
}
