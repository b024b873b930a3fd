package qmp

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
)

// Signature is what query-qmp-schema says about a command: the Go types
// its arguments decode into and its result encodes from, and its
// features. The schema is built from these types by the same rules Decode
// follows (see Schema), so it lists exactly what the command accepts.
type Signature struct {
	Arg, Ret reflect.Type
	// Features are the command's QAPI features ("deprecated", ...).
	// Commands whose name starts with "x-" get "unstable" by themselves.
	Features []string
}

// Signed is implemented by handlers that declare their signature. Command
// and Declare return such handlers; a handler that is not Signed makes
// Schema report a problem.
type Signed interface {
	Handler
	QMPSignature() Signature
}

// signedHandler is a Handler with a declared signature.
type signedHandler struct {
	Handler
	sig Signature
}

func (h signedHandler) QMPSignature() Signature { return h.sig }

// Declare gives a handler that decodes its own arguments (a union that
// dispatches on a discriminator) the signature of a command taking A and
// returning R. A is usually a type whose shape is declared with
// DeclareType, and the handler must decode exactly what that shape says.
func Declare[A, R any](h Handler, features ...string) Signed {
	return signedHandler{h, Signature{Arg: reflect.TypeFor[A](), Ret: reflect.TypeFor[R](), Features: features}}
}

// WithFeatures adds QAPI features to a signed handler's signature, such as
// "deprecated" for a command kept for old clients.
func WithFeatures(h Signed, features ...string) Signed {
	sig := h.QMPSignature()
	sig.Features = append(slices.Clone(sig.Features), features...)
	return signedHandler{h, sig}
}

// A Shape describes the wire form of a Go type that reflection cannot see:
// a union decoded in several steps, an alternate that decodes itself, a
// member kept as raw JSON until a later step decodes it. Declare shapes
// with Server.DeclareType. The types are Union, Alternate and AnyValue.
type Shape interface{ qmpShape() }

// Union is a QAPI flat union: the members of Base, among them the Tag
// member, plus the members of the variant whose Case is the tag's value.
// A plain string tag is announced as an enum of the cases.
type Union struct {
	// Name names the type in the documentation (the wire masks it).
	Name string
	Base reflect.Type
	Tag  string
	// Variants is called every time a schema is built, so that it can
	// list a registry that is filled at init time (block drivers).
	Variants func() []Variant
}

// Variant is one case of a union. Type is a struct of the members the case
// adds; nil means none.
type Variant struct {
	Case string
	Type reflect.Type
}

// Alternate is a value of one of several types, told apart by JSON type:
// a node name or a node's options, a string or null.
type Alternate struct {
	Name  string
	Types []reflect.Type
}

// AnyValue says that the type takes any JSON value (the builtin "any").
type AnyValue struct{}

func (Union) qmpShape()     {}
func (Alternate) qmpShape() {}
func (AnyValue) qmpShape()  {}

// Null is the JSON null as an alternative of an Alternate.
type Null struct{}

var (
	nullType  = reflect.TypeFor[Null]()
	emptyType = reflect.TypeFor[struct{}]()
)

// DeclareType declares the shape of t (and of *t) for the schema. Types
// that implement Unmarshaler need one, because what they accept is in
// their code, not their fields.
func (s *Server) DeclareType(t reflect.Type, sh Shape) {
	s.schemaMu.Lock()
	defer s.schemaMu.Unlock()
	s.shapes[t] = sh
}

// DeclareEvent declares that the event name is emitted with data that
// encodes like the Go type data (a struct; nil for events without data).
func (s *Server) DeclareEvent(name string, data reflect.Type) {
	s.schemaMu.Lock()
	defer s.schemaMu.Unlock()
	if data == nil {
		data = emptyType
	}
	s.events[name] = data
}

// The builtin commands' signatures, with the types their code decodes.

type capabilitiesArgs struct {
	Enable []capability `json:"enable,omitempty"`
}

// versionInfo is the shape of versionValue (built member by member so the
// order is qsd's).
type versionInfo struct {
	Qemu struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	} `json:"qemu"`
	Package string `json:"package"`
}

// QMPSignature gives the builtins that the executor runs itself their
// signatures.
func (b builtinHandler) QMPSignature() Signature {
	if b == cmdCapabilities {
		return Signature{Arg: reflect.TypeFor[capabilitiesArgs](), Ret: emptyType}
	}
	return Signature{Arg: emptyType, Ret: emptyType}
}

// declareBuiltinShapes declares the shapes the builtin commands need.
func (s *Server) declareBuiltinShapes() {
	s.DeclareType(reflect.TypeFor[SchemaInfo](), Union{
		Name: "SchemaInfo",
		Base: reflect.TypeFor[schemaInfoBase](),
		Tag:  "meta-type",
		Variants: func() []Variant {
			return []Variant{
				{string(MetaBuiltin), reflect.TypeFor[SchemaInfoBuiltin]()},
				{string(MetaEnum), reflect.TypeFor[SchemaInfoEnum]()},
				{string(MetaArray), reflect.TypeFor[SchemaInfoArray]()},
				{string(MetaObject), reflect.TypeFor[SchemaInfoObject]()},
				{string(MetaAlternate), reflect.TypeFor[SchemaInfoAlternate]()},
				{string(MetaCommand), reflect.TypeFor[SchemaInfoCommand]()},
				{string(MetaEvent), reflect.TypeFor[SchemaInfoEvent]()},
			}
		},
	})
}

// queryCommands and querySchema are the handlers of the builtin queries.
func (s *Server) queryCommands(context.Context, *struct{}) ([]commandInfo, error) {
	return s.commandList(), nil
}

func (s *Server) querySchema(context.Context, *struct{}) ([]SchemaInfo, error) {
	sc, problems := s.Schema(true)
	for _, p := range problems {
		s.log.WithError(p).Error("qmp: query-qmp-schema")
	}
	return sc, nil
}

// queryVersion is query-version.
func (s *Server) queryVersion() Signed {
	return Declare[struct{}, versionInfo](HandlerFunc(func(ctx context.Context, args json.RawMessage) (any, error) {
		if err := Decode(args, "", &struct{}{}); err != nil {
			return nil, err
		}
		return s.versionValue(), nil
	}))
}

// RawAs keeps a member's JSON for a later step to decode (a union whose
// variants a registry decides, decoded once the handler knows which), and
// tells the schema that the member has the shape of T.
type RawAs[T any] json.RawMessage

// UnmarshalQMP implements Unmarshaler: it keeps the JSON as it is.
func (r *RawAs[T]) UnmarshalQMP(raw json.RawMessage, path string) error {
	*r = RawAs[T](slices.Clone(raw))
	return nil
}

func (RawAs[T]) qmpShapeOf() reflect.Type { return reflect.TypeFor[T]() }

// shapeOfer is implemented by RawAs.
type shapeOfer interface{ qmpShapeOf() reflect.Type }
