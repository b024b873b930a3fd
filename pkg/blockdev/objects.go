package blockdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

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

// object resolves a QOM path; blockd's objects live under /objects.
func (s *Server) object(path string) (string, block.Object, error) {
	id, ok := strings.CutPrefix(path, "/objects/")
	if !ok {
		id = path
	}
	obj := s.G.Object(id)
	if obj == nil {
		return "", nil, qmp.Classf(qmp.DeviceNotFound, "Device '%s' not found", path)
	}
	return id, obj, nil
}

func (s *Server) qomGet(ctx context.Context, a *qomGetArgs) (any, error) {
	s.G.Lock()
	defer s.G.Unlock()
	_, obj, err := s.object(a.Path)
	if err != nil {
		return nil, err
	}
	switch o := obj.(type) {
	case *throttle.Group:
		if a.Property == "limits" {
			return o.Limits(), nil
		}
		if v, ok := o.LegacyProperty(a.Property); ok {
			return v, nil
		}
	case *iothread:
	}
	return nil, fmt.Errorf("Property '%s.%s' not found", obj.QOMType(), a.Property)
}

func (s *Server) qomSet(ctx context.Context, a *qomSetArgs) (empty, error) {
	s.G.Lock()
	defer s.G.Unlock()
	_, obj, err := s.object(a.Path)
	if err != nil {
		return empty{}, err
	}
	g, ok := obj.(*throttle.Group)
	if !ok {
		return empty{}, fmt.Errorf("Property '%s.%s' not found", obj.QOMType(), a.Property)
	}
	if a.Property == "limits" {
		var l throttle.Limits
		if err := qmp.Decode(a.Value, "", &l); err != nil {
			return empty{}, err
		}
		return empty{}, g.SetLimits(l)
	}
	if _, ok := g.LegacyProperty(a.Property); !ok {
		return empty{}, fmt.Errorf("Property '%s.%s' not found", obj.QOMType(), a.Property)
	}
	var v int64
	if err := json.Unmarshal(a.Value, &v); err != nil {
		return empty{}, errors.New("Invalid parameter type for 'value', expected: integer")
	}
	return empty{}, g.SetLegacyProperty(a.Property, v)
}
