package blockdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/filters/throttle"
	"github.com/blockd/blockd/pkg/qmp"
)

// ObjectType is QMP's ObjectType: every type qsd 7.2 knows. blockd
// creates throttle-group and iothread objects; the others are refused
// with a clear message.
type ObjectType string

// EnumValues implements qmp.Enum.
func (ObjectType) EnumValues() []string {
	return []string{"authz-list", "authz-listfile", "authz-pam", "authz-simple", "can-bus", "can-host-socketcan",
		"colo-compare", "cryptodev-backend", "cryptodev-backend-builtin", "cryptodev-backend-lkcf", "cryptodev-vhost-user",
		"dbus-vmstate", "filter-buffer", "filter-dump", "filter-mirror", "filter-redirector", "filter-replay",
		"filter-rewriter", "input-barrier", "input-linux", "iothread", "main-loop", "memory-backend-epc",
		"memory-backend-file", "memory-backend-memfd", "memory-backend-ram", "pef-guest", "pr-manager-helper", "qtest",
		"rng-builtin", "rng-egd", "rng-random", "secret", "secret_keyring", "sev-guest", "thread-context",
		"s390-pv-guest", "throttle-group", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509", "tls-cipher-suites",
		"x-remote-object", "x-vfio-user-server"}
}

type objectHead struct {
	QOMType ObjectType `json:"qom-type"`
	ID      string     `json:"id"`
}

// iothreadProps are IothreadProperties. blockd's goroutines need no
// iothreads; the object exists so that configurations naming one work.
type iothreadProps struct {
	PollMaxNs     *int64 `json:"poll-max-ns,omitempty"`
	PollGrow      *int64 `json:"poll-grow,omitempty"`
	PollShrink    *int64 `json:"poll-shrink,omitempty"`
	AIOMaxBatch   *int64 `json:"aio-max-batch,omitempty"`
	ThreadPoolMin *int64 `json:"thread-pool-min,omitempty"`
	ThreadPoolMax *int64 `json:"thread-pool-max,omitempty"`
}

type iothread struct{ props iothreadProps }

func (*iothread) QOMType() string { return "iothread" }
func (*iothread) InUse() bool     { return false }

func (s *Server) objectAdd(ctx context.Context, raw json.RawMessage) (any, error) {
	raw = args(raw)
	var head objectHead
	if err := qmp.Decode(raw, "", &head, &map[string]json.RawMessage{}); err != nil {
		return nil, err
	}
	if !block.ValidID(head.ID) {
		return nil, fmt.Errorf("Parameter 'id' expects an identifier")
	}
	var obj block.Object
	switch head.QOMType {
	case "throttle-group":
		var p throttle.Properties
		if err := qmp.Decode(raw, "", &head, &p); err != nil {
			return nil, err
		}
		g, err := throttle.NewGroupFromProperties(head.ID, p, nil)
		if err != nil {
			return nil, err
		}
		obj = g
	case "iothread":
		var p iothreadProps
		if err := qmp.Decode(raw, "", &head, &p); err != nil {
			return nil, err
		}
		obj = &iothread{props: p}
	default:
		return nil, fmt.Errorf("Objects of type '%s' are not supported by blockd", head.QOMType)
	}
	s.G.Lock()
	defer s.G.Unlock()
	return empty{}, s.G.AddObject(head.ID, obj)
}

func (s *Server) objectDel(ctx context.Context, a *idArgs) (empty, error) {
	s.G.Lock()
	defer s.G.Unlock()
	return empty{}, s.G.DelObject(a.ID)
}

type qomGetArgs struct {
	Path     string `json:"path"`
	Property string `json:"property"`
}

type qomSetArgs struct {
	Path     string          `json:"path"`
	Property string          `json:"property"`
	Value    json.RawMessage `json:"value"`
}

func (s *Server) qomGet(ctx context.Context, a *qomGetArgs) (any, error) {
	s.G.Lock()
	defer s.G.Unlock()
	n, err := s.resolveQOM(a.Path)
	if err != nil {
		return nil, err
	}
	if a.Property == "type" {
		return n.typ, nil
	}
	switch {
	case n.dev != nil:
		if v, ok := n.dev.Property(a.Property); ok {
			return v, nil
		}
	case n.obj != nil:
		if g, ok := n.obj.(*throttle.Group); ok {
			if a.Property == "limits" {
				return g.Limits(), nil
			}
			if v, ok := g.LegacyProperty(a.Property); ok {
				return v, nil
			}
		}
	}
	return nil, fmt.Errorf("Property '%s.%s' not found", n.typ, a.Property)
}

func (s *Server) qomSet(ctx context.Context, a *qomSetArgs) (empty, error) {
	s.G.Lock()
	defer s.G.Unlock()
	n, err := s.resolveQOM(a.Path)
	if err != nil {
		return empty{}, err
	}
	g, ok := n.obj.(*throttle.Group)
	if !ok || a.Property == "type" {
		if (n.obj == nil || a.Property == "type") && slices.ContainsFunc(typeProperties(qomTypes(), n.typ), func(p qomProperty) bool { return p.Name == a.Property }) {
			return empty{}, fmt.Errorf("Property '%s.%s' is not writable", n.typ, a.Property)
		}
		return empty{}, fmt.Errorf("Property '%s.%s' not found", n.typ, a.Property)
	}
	if a.Property == "limits" {
		var l throttle.Limits
		if err := qmp.Decode(a.Value, "", &l); err != nil {
			return empty{}, err
		}
		return empty{}, g.SetLimits(l)
	}
	if _, ok := g.LegacyProperty(a.Property); !ok {
		return empty{}, fmt.Errorf("Property '%s.%s' not found", n.typ, a.Property)
	}
	var v int64
	if err := json.Unmarshal(a.Value, &v); err != nil {
		return empty{}, errors.New("Invalid parameter type for 'value', expected: integer")
	}
	return empty{}, g.SetLegacyProperty(a.Property, v)
}
