package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// Unmarshaler lets a type decode itself: QAPI alternates ("object or
// string", "string or null") and unions. It receives the JSON of its value
// (plain JSON, doubles written with a fraction or exponent) and the dotted
// path of the value for error messages ("file", "options[0].backing").
// A field whose type implements it also receives an explicit null.
type Unmarshaler interface {
	UnmarshalQMP(raw json.RawMessage, path string) error
}

// Enum is implemented by string types with a closed set of values. Decoding
// a value outside the set fails with
// "Parameter 'sync' does not accept value 'bogus'".
type Enum interface {
	EnumValues() []string
}

// Decode decodes the JSON object raw strictly into one or more destinations
// and reports the first problem with QEMU's wording, as a GenericError:
//
//	Parameter 'node-name' is missing
//	Parameter 'extra' is unexpected
//	Invalid parameter type for 'speed', expected: integer
//	Parameter 'sync' does not accept value 'bogus'
//
// Each destination is a pointer to a struct (its exported fields, tagged
// with their wire names, embedded structs flattened as encoding/json does),
// or a pointer to a map, which takes every member no struct took. A key is
// unexpected only if no destination has it, so a flat union decodes its
// common members into one struct and the variant's into another. Members
// are checked in field order, destination by destination, and unexpected
// keys last, as QEMU's visitors do.
//
// A field is optional when it is a pointer or its json tag has omitempty;
// every other field is required. An explicit null is a type error unless the
// field's type is json.RawMessage, any, or implements Unmarshaler.
//
// Integers: int, int64 and smaller signed types take JSON integers that fit
// (a double such as 1.5 or 1e3 is a type error, "expected: integer"); the
// smaller widths report "Parameter 'x' expects int32_t" when out of range.
// uint64 and uint take 0..2^64-1 and, as QEMU does, negative integers
// converted to uint64 (-1 becomes 2^64-1); anything else is
// "Parameter 'x' expects uint64". float64 takes any number. json.RawMessage
// and any take any JSON; any decodes like encoding/json (numbers as float64).
//
// path prefixes the names in messages: "" at top level, "file" for a nested
// object gives "Parameter 'file.filename' is missing". A single destination
// that implements Unmarshaler gets raw and path as they are.
func Decode(raw json.RawMessage, path string, dsts ...any) error {
	if len(dsts) == 1 {
		if u, ok := dsts[0].(Unmarshaler); ok {
			if len(raw) == 0 {
				raw = json.RawMessage("{}")
			}
			return normErr(u.UnmarshalQMP(raw, path))
		}
	}
	v := value{kind: kindObject}
	if len(raw) > 0 {
		var err error
		if v, err = parseJSON(raw, false); err != nil {
			return &Error{Class: GenericError, Desc: err.Error(), Err: err}
		}
	}
	if v.kind != kindObject {
		return errType(nameOr(path), "object")
	}
	d := decoder{}
	consumed := make([]bool, v.numMembers())
	var maps []reflect.Value
	for _, dst := range dsts {
		rv := reflect.ValueOf(dst)
		if rv.Kind() != reflect.Pointer || rv.IsNil() {
			return internalErr("Decode: destination %T is not a non-nil pointer", dst)
		}
		rv = rv.Elem()
		switch rv.Kind() {
		case reflect.Struct:
			if err := d.fields(&v, path, rv, consumed); err != nil {
				return err
			}
		case reflect.Map:
			maps = append(maps, rv)
		default:
			return internalErr("Decode: destination %T is not a struct or map", dst)
		}
	}
	for _, m := range maps {
		if err := d.mapMembers(&v, path, m, consumed); err != nil {
			return err
		}
	}
	return checkUnexpected(&v, path, consumed)
}

// Command adapts a typed function to a Handler. The arguments are decoded
// with Decode into a fresh A (missing "arguments" decodes as {}); a result
// of type struct{} or a nil result encodes as {}.
//
// The handler's signature (Signed) is A and R: query-qmp-schema describes
// the command from them with no further declaration.
func Command[A, R any](fn func(ctx context.Context, a *A) (R, error)) Signed {
	return Declare[A, R](HandlerFunc(func(ctx context.Context, args json.RawMessage) (any, error) {
		a := new(A)
		if err := Decode(args, "", a); err != nil {
			return nil, err
		}
		r, err := fn(ctx, a)
		if err = normErr(err); err != nil {
			return nil, err
		}
		return r, nil
	}))
}

func nameOr(path string) string {
	if path == "" {
		return "<anonymous>"
	}
	return path
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// internalErr is a programming error in a destination type. It is logged
// by the server like any cause; the client reads a generic sentence.
func internalErr(format string, a ...any) *Error {
	return &Error{Class: GenericError, Desc: "Internal error", Err: fmt.Errorf("qmp: "+format, a...)}
}

func checkUnexpected(v *value, path string, consumed []bool) error {
	for i, c := range consumed {
		if !c {
			k, _ := v.member(i)
			return errUnexpected(joinPath(path, k))
		}
	}
	return nil
}

var (
	unmarshalerType = reflect.TypeFor[Unmarshaler]()
	enumType        = reflect.TypeFor[Enum]()
	rawMessageType  = reflect.TypeFor[json.RawMessage]()
)

// fieldInfo describes one member of a destination struct.
type fieldInfo struct {
	name     string
	index    []int
	typ      reflect.Type
	optional bool
	features []string // QAPI features from the `qmp:"..."` tag, for the schema
}

type structInfo struct {
	fields []fieldInfo
}

var structCache sync.Map // reflect.Type -> *structInfo

// structFields lists the members of t the way encoding/json does: embedded
// structs without a name are flattened, and of several fields with one
// name the least nested wins (a tagged one on a tie; a tie left is dropped).
func structFields(t reflect.Type) *structInfo {
	if si, ok := structCache.Load(t); ok {
		return si.(*structInfo)
	}
	type cand struct {
		fieldInfo
		depth  int
		tagged bool
	}
	var cands []cand
	var walk func(t reflect.Type, index []int, depth int, seen map[reflect.Type]bool)
	walk = func(t reflect.Type, index []int, depth int, seen map[reflect.Type]bool) {
		if seen[t] {
			return
		}
		seen[t] = true
		defer delete(seen, t)
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			tag := sf.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(append([]int(nil), index...), i)
			ft := sf.Type
			if sf.Anonymous && name == "" {
				et := ft
				if et.Kind() == reflect.Pointer {
					et = et.Elem()
				}
				if et.Kind() == reflect.Struct {
					walk(et, idx, depth+1, seen)
					continue
				}
			}
			if !sf.IsExported() {
				continue
			}
			tagged := name != ""
			if name == "" {
				name = sf.Name
			}
			optional := ft.Kind() == reflect.Pointer
			for _, o := range strings.Split(opts, ",") {
				if o == "omitempty" || o == "omitzero" {
					optional = true
				}
			}
			var features []string
			if q := sf.Tag.Get("qmp"); q != "" {
				features = strings.Split(q, ",")
			}
			cands = append(cands, cand{
				fieldInfo: fieldInfo{name: name, index: idx, typ: ft, optional: optional, features: features},
				depth:     depth,
				tagged:    tagged,
			})
		}
	}
	walk(t, nil, 0, map[reflect.Type]bool{})

	byName := map[string][]int{}
	for i, c := range cands {
		byName[c.name] = append(byName[c.name], i)
	}
	si := &structInfo{}
	for i, c := range cands {
		group := byName[c.name]
		if len(group) > 1 {
			best, ties := -1, 0
			for _, j := range group {
				o := cands[j]
				switch {
				case best < 0 || o.depth < cands[best].depth ||
					(o.depth == cands[best].depth && o.tagged && !cands[best].tagged):
					best, ties = j, 1
				case o.depth == cands[best].depth && o.tagged == cands[best].tagged:
					ties++
				}
			}
			if ties > 1 || best != i {
				continue
			}
		}
		si.fields = append(si.fields, c.fieldInfo)
	}
	actual, _ := structCache.LoadOrStore(t, si)
	return actual.(*structInfo)
}

type decoder struct{}

// fields decodes the members of object v into the struct rv.
func (d *decoder) fields(v *value, path string, rv reflect.Value, consumed []bool) error {
	for _, f := range structFields(rv.Type()).fields {
		i := v.find(f.name)
		if i < 0 {
			if f.optional {
				continue
			}
			return errMissing(joinPath(path, f.name))
		}
		consumed[i] = true
		fv, err := fieldByIndex(rv, f.index)
		if err != nil {
			return err
		}
		_, mv := v.member(i)
		if err := d.value(mv, fv, joinPath(path, f.name), f.name); err != nil {
			return err
		}
	}
	return nil
}

// fieldByIndex is reflect.Value.FieldByIndex that allocates nil embedded
// struct pointers on the way.
func fieldByIndex(v reflect.Value, index []int) (reflect.Value, error) {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				if !v.CanSet() {
					return reflect.Value{}, internalErr("cannot set embedded pointer %s", v.Type())
				}
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v, nil
}

// mapMembers decodes every member not consumed yet into map rv.
func (d *decoder) mapMembers(v *value, path string, rv reflect.Value, consumed []bool) error {
	if rv.Type().Key().Kind() != reflect.String {
		return internalErr("map key of %s is not a string", rv.Type())
	}
	if rv.IsNil() {
		rv.Set(reflect.MakeMap(rv.Type()))
	}
	et := rv.Type().Elem()
	for i := 0; i < v.numMembers(); i++ {
		if consumed[i] {
			continue
		}
		consumed[i] = true
		k, mv := v.member(i)
		ev := reflect.New(et).Elem()
		if err := d.value(mv, ev, joinPath(path, k), k); err != nil {
			return err
		}
		rv.SetMapIndex(reflect.ValueOf(k).Convert(rv.Type().Key()), ev)
	}
	return nil
}

// value decodes v into rv. full is the dotted path for most messages; bare
// is the member's own name ("" for an array element), which QEMU uses in
// enum and range messages ("null" when there is none).
func (d *decoder) value(v *value, rv reflect.Value, full, bare string) error {
	t := rv.Type()

	if rv.CanAddr() && reflect.PointerTo(t).Implements(unmarshalerType) && t.Kind() != reflect.Pointer {
		return callUnmarshaler(rv.Addr().Interface().(Unmarshaler), v, full)
	}
	if t == rawMessageType {
		rv.SetBytes(renderArgs(v))
		return nil
	}

	switch t.Kind() {
	case reflect.Pointer:
		nv := reflect.New(t.Elem())
		if err := d.value(v, nv.Elem(), full, bare); err != nil {
			return err
		}
		rv.Set(nv)
		return nil

	case reflect.Interface:
		if t.NumMethod() != 0 {
			return internalErr("unsupported interface type %s at '%s'", t, full)
		}
		if a := toAny(v); a != nil {
			rv.Set(reflect.ValueOf(a))
		} else {
			rv.Set(reflect.Zero(t))
		}
		return nil

	case reflect.String:
		if v.kind != kindString {
			return errType(full, "string")
		}
		if t.Implements(enumType) || reflect.PointerTo(t).Implements(enumType) {
			if !enumHas(t, v.s) {
				if bare == "" {
					bare = "null"
				}
				return errEnum(bare, v.s)
			}
		}
		rv.SetString(v.s)
		return nil

	case reflect.Bool:
		if v.kind != kindBool {
			return errType(full, "boolean")
		}
		rv.SetBool(v.boolean())
		return nil

	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Int16, reflect.Int8:
		if v.kind != kindInt {
			return errType(full, "integer")
		}
		i := v.int64()
		if rv.OverflowInt(i) {
			return errValue(bareOrNull(bare), intTypeName(t))
		}
		rv.SetInt(i)
		return nil

	case reflect.Uint, reflect.Uint64, reflect.Uintptr, reflect.Uint32, reflect.Uint16, reflect.Uint8:
		var u uint64
		switch v.kind {
		case kindInt:
			// compat(qsd-7.2): QEMU takes negative values for unsigned
			// parameters and converts them.
			u = uint64(v.int64())
		case kindUint:
			u = v.n
		default:
			return errValue(full, "uint64")
		}
		if rv.OverflowUint(u) {
			return errValue(bareOrNull(bare), intTypeName(t))
		}
		rv.SetUint(u)
		return nil

	case reflect.Float64, reflect.Float32:
		var f float64
		switch v.kind {
		case kindInt:
			f = float64(v.int64())
		case kindUint:
			f = float64(v.n)
		case kindFloat:
			f = v.float64()
		default:
			return errType(full, "number")
		}
		rv.SetFloat(f)
		return nil

	case reflect.Slice:
		if v.kind != kindArray {
			return errType(full, "array")
		}
		s := reflect.MakeSlice(t, len(v.elems), len(v.elems))
		for i := range v.elems {
			if err := d.value(&v.elems[i], s.Index(i), full+"["+strconv.Itoa(i)+"]", ""); err != nil {
				return err
			}
		}
		rv.Set(s)
		return nil

	case reflect.Struct:
		if v.kind != kindObject {
			return errType(full, "object")
		}
		consumed := make([]bool, v.numMembers())
		if err := d.fields(v, full, rv, consumed); err != nil {
			return err
		}
		return checkUnexpected(v, full, consumed)

	case reflect.Map:
		if v.kind != kindObject {
			return errType(full, "object")
		}
		rv.Set(reflect.Zero(t))
		return d.mapMembers(v, full, rv, make([]bool, v.numMembers()))
	}
	return internalErr("unsupported type %s at '%s'", t, full)
}

func bareOrNull(bare string) string {
	if bare == "" {
		return "null"
	}
	return bare
}

// intTypeName names an integer type as QEMU's range messages do.
func intTypeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int8:
		return "int8_t"
	case reflect.Int16:
		return "int16_t"
	case reflect.Int32:
		return "int32_t"
	case reflect.Uint8:
		return "uint8_t"
	case reflect.Uint16:
		return "uint16_t"
	case reflect.Uint32:
		return "uint32_t"
	case reflect.Uint, reflect.Uint64, reflect.Uintptr:
		return "uint64"
	}
	return "integer"
}

var enumCache sync.Map // reflect.Type -> map[string]bool

// enumOf returns t's Enum implementation, or nil when t is no enum.
func enumOf(t reflect.Type) Enum {
	switch {
	case t.Implements(enumType):
		return reflect.Zero(t).Interface().(Enum)
	case reflect.PointerTo(t).Implements(enumType):
		return reflect.New(t).Interface().(Enum)
	}
	return nil
}

func enumHas(t reflect.Type, s string) bool {
	if m, ok := enumCache.Load(t); ok {
		return m.(map[string]bool)[s]
	}
	m := map[string]bool{}
	for _, v := range enumOf(t).EnumValues() {
		m[v] = true
	}
	enumCache.Store(t, m)
	return m[s]
}

func callUnmarshaler(u Unmarshaler, v *value, path string) error {
	if err := normErr(u.UnmarshalQMP(renderArgs(v), path)); err != nil {
		return asError(err)
	}
	return nil
}
