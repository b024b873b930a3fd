package blockdev

import (
	"reflect"
	"slices"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/chardev"
	"github.com/blockd/blockd/pkg/filters/throttle"
	nbdclient "github.com/blockd/blockd/pkg/formats/nbd"
	"github.com/blockd/blockd/pkg/formats/qcow2"
	"github.com/blockd/blockd/pkg/qmp"
)

// What query-qmp-schema cannot learn by reflection: the unions that the
// handlers decode in steps and the alternates that decode themselves.
// Everything else is described from the Go types the handlers decode
// (qmp.Command's A and R), so a new qmp.Command needs nothing here.

// BlockdevOptions is blockdev-add's argument (and BlockdevRef's object
// form): the common options and, by "driver", the options of every
// driver registered with block.Register. A driver added in its own file
// appears in the schema with no change here.
type BlockdevOptions struct{}

// BlockdevCreateOptions is blockdev-create's "options": a union on
// "driver" of the drivers registered with block.RegisterCreate.
type BlockdevCreateOptions struct{}

// BlockExportOptions is block-export-add's argument.
type BlockExportOptions struct{}

// ObjectOptions is object-add's argument.
type ObjectOptions struct{}

// exportTypes are the block-export-add types blockExportAdd accepts and
// the type of each one's own members. TestSchemaUnionsMatchHandlers checks
// that the handler accepts exactly these.
var exportTypes = []qmp.Variant{
	{Case: "nbd", Type: reflect.TypeFor[NBDExportArgs]()},
	{Case: "fuse", Type: reflect.TypeFor[FuseExportArgs]()},
}

// objectTypes are the object-add types objectAdd accepts.
var objectTypes = []qmp.Variant{
	{Case: "iothread", Type: reflect.TypeFor[iothreadProps]()},
	{Case: "throttle-group", Type: reflect.TypeFor[throttle.Properties]()},
}

// dataWrapper is a union variant whose members are in "data", as in
// QEMU's "simple" unions (SocketAddressLegacy, TransactionAction).
type dataWrapper[T any] struct {
	Data T `json:"data"`
}

func wrapped[T any](name string) qmp.Variant {
	return qmp.Variant{Case: name, Type: reflect.TypeFor[dataWrapper[T]]()}
}

// transactionActions are the transaction action types transaction runs
// besides the bitmap commands (bitmapCommands).
var transactionActions = []qmp.Variant{
	wrapped[struct{}]("abort"),
	wrapped[snapshotArgs]("blockdev-snapshot"),
	wrapped[snapshotSyncArgs]("blockdev-snapshot-sync"),
	wrapped[snapshotInternalArgs]("blockdev-snapshot-internal-sync"),
	wrapped[backupArgs]("blockdev-backup"),
	wrapped[driveBackupArgs]("drive-backup"),
}

type unionTag[T any] struct {
	Type T `json:"type"`
}

func fixed(vs []qmp.Variant) func() []qmp.Variant { return func() []qmp.Variant { return vs } }

// declareSchema declares the shapes above to q.
func declareSchema(q *qmp.Server) {
	q.DeclareType(reflect.TypeFor[BlockdevOptions](), qmp.Union{
		Name: "BlockdevOptions", Base: reflect.TypeFor[block.CommonOptions](), Tag: "driver",
		Variants: driverVariants,
	})
	q.DeclareType(reflect.TypeFor[BlockdevCreateOptions](), qmp.Union{
		Name: "BlockdevCreateOptions", Base: reflect.TypeFor[struct {
			Driver string `json:"driver"`
		}](), Tag: "driver",
		Variants: creatorVariants,
	})
	q.DeclareType(reflect.TypeFor[BlockExportOptions](), qmp.Union{
		Name: "BlockExportOptions", Base: reflect.TypeFor[ExportArgs](), Tag: "type",
		Variants: fixed(exportTypes),
	})
	q.DeclareType(reflect.TypeFor[ObjectOptions](), qmp.Union{
		Name: "ObjectOptions", Base: reflect.TypeFor[objectHead](), Tag: "qom-type",
		Variants: fixed(objectTypes),
	})
	q.DeclareType(reflect.TypeFor[transactionAction](), qmp.Union{
		Name: "TransactionAction", Base: reflect.TypeFor[unionTag[string]](), Tag: "type",
		Variants: func() []qmp.Variant { return append(slices.Clone(transactionActions), bitmapVariants()...) },
	})
	q.DeclareType(reflect.TypeFor[SocketAddressLegacy](), qmp.Union{
		Name: "SocketAddressLegacy", Base: reflect.TypeFor[unionTag[AddrType]](), Tag: "type",
		Variants: fixed([]qmp.Variant{wrapped[InetSocketAddress]("inet"), wrapped[UnixSocketAddress]("unix")}),
	})

	q.DeclareType(reflect.TypeFor[nbdclient.SocketAddress](), qmp.Union{
		Name: "SocketAddress", Base: reflect.TypeFor[unionTag[nbdclient.AddrType]](), Tag: "type",
		Variants: fixed([]qmp.Variant{
			{Case: "inet", Type: reflect.TypeFor[nbdclient.InetAddress]()},
			{Case: "unix", Type: reflect.TypeFor[nbdclient.UnixAddress]()},
		}),
	})

	chardev.DeclareSchema(q)
	q.DeclareType(reflect.TypeFor[AmendOptions](), qmp.Union{
		Name: "BlockdevAmendOptions", Base: reflect.TypeFor[struct {
			Driver qcow2.DriverName `json:"driver"`
		}](), Tag: "driver",
		Variants: fixed([]qmp.Variant{
			{Case: "qcow2", Type: reflect.TypeFor[struct {
				Encrypt *cryptoAmend `json:"encrypt,omitempty"`
			}]()},
			{Case: "luks", Type: reflect.TypeFor[qcow2.LUKSAmendOptions]()},
		}),
	})
	q.DeclareType(reflect.TypeFor[cryptoAmend](), qmp.Union{
		Name: "QCryptoBlockAmendOptions", Base: reflect.TypeFor[struct {
			Format qcow2.CryptoFormat `json:"format"`
		}](), Tag: "format",
		Variants: fixed([]qmp.Variant{{Case: "luks", Type: reflect.TypeFor[qcow2.LUKSAmendOptions]()}}),
	})
	declareBitmapSchema(q)

	str, null := reflect.TypeFor[string](), reflect.TypeFor[qmp.Null]()
	opts := reflect.TypeFor[BlockdevOptions]()
	q.DeclareType(reflect.TypeFor[block.NodeRef](), qmp.Alternate{Name: "BlockdevRef", Types: []reflect.Type{opts, str}})
	q.DeclareType(reflect.TypeFor[block.NodeRefOrNull](), qmp.Alternate{Name: "BlockdevRefOrNull", Types: []reflect.Type{opts, str, null}})
	q.DeclareType(reflect.TypeFor[strOrNull](), qmp.Alternate{Name: "StrOrNull", Types: []reflect.Type{str, null}})
	q.DeclareType(reflect.TypeFor[qcow2.OverlapCheck](), qmp.Alternate{Name: "Qcow2OverlapChecks",
		Types: []reflect.Type{reflect.TypeFor[qcow2.OverlapCheckFlags](), str}})

	for name, data := range block.DeclaredEvents() {
		q.DeclareEvent(name, data)
	}
	q.DeclareEvent("BLOCK_EXPORT_DELETED", reflect.TypeFor[exportDeletedEvent]())
}

// exportDeletedEvent is the data deleteExportLocked emits.
type exportDeletedEvent struct {
	ID string `json:"id"`
}

// driverVariants lists the drivers a user can add, with their options.
func driverVariants() []qmp.Variant {
	var vs []qmp.Variant
	for _, d := range block.Drivers() {
		if !d.Implicit {
			vs = append(vs, qmp.Variant{Case: d.Name, Type: reflect.TypeOf(d.NewOptions())})
		}
	}
	return vs
}

// creatorVariants lists the drivers blockdev-create can create images of.
func creatorVariants() []qmp.Variant {
	var vs []qmp.Variant
	for _, c := range block.Creators() {
		vs = append(vs, qmp.Variant{Case: c.Driver, Type: c.Options})
	}
	return vs
}
