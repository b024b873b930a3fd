package chardev

import (
	"reflect"

	"github.com/blockd/blockd/pkg/qmp"
)

// DeclareSchema tells query-qmp-schema the shapes of the two unions this
// package decodes itself: ChardevBackend (the backends blockd opens, each
// with its options in "data") and SocketAddressLegacy.
func DeclareSchema(q *qmp.Server) {
	var backends []qmp.Variant
	for _, k := range Backends {
		backends = append(backends, qmp.Variant{Case: string(k), Type: reflect.StructOf([]reflect.StructField{{
			Name: "Data", Type: reflect.TypeOf(variant(k)).Elem(), Tag: `json:"data"`,
		}})})
	}
	q.DeclareType(reflect.TypeFor[Backend](), qmp.Union{
		Name: "ChardevBackend", Base: reflect.TypeFor[struct {
			Type Kind `json:"type"`
		}](), Tag: "type",
		Variants: func() []qmp.Variant { return backends },
	})
	q.DeclareType(reflect.TypeFor[SocketAddressLegacy](), qmp.Union{
		Name: "SocketAddressLegacy", Base: reflect.TypeFor[struct {
			Type AddrType `json:"type"`
		}](), Tag: "type",
		Variants: func() []qmp.Variant {
			return []qmp.Variant{
				{Case: "inet", Type: reflect.TypeFor[struct {
					Data InetSocketAddress `json:"data"`
				}]()},
				{Case: "unix", Type: reflect.TypeFor[struct {
					Data UnixSocketAddress `json:"data"`
				}]()},
			}
		},
	})
}
