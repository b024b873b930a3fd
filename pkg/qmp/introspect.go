package qmp

import (
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Schema builds what query-qmp-schema returns from the signatures of the
// registered commands, the declared events and the declared shapes. Types
// are described by the rules Decode decodes them by, from the same field
// table, so the schema cannot drift from the decoder:
//
//   - a struct is an object; its members are the fields Decode takes, by
//     their json names, optional when Decode lets them be absent; a
//     field's `qmp:"deprecated"` tag lists its features, and a name that
//     starts with "x-" is "unstable";
//   - a string type with EnumValues is an enum of those values; other
//     strings are "str", integers "int", floats "number", bools "bool";
//   - a slice is an array; json.RawMessage, interfaces and maps are "any";
//   - a type with a shape declared by DeclareType is that union or
//     alternate, and a type that implements Unmarshaler needs one.
//
// Commands and events come first, sorted by name, then the types in the
// order they were met. Every struct without members is the one type
// "q_empty". With masked,
// type names are numbers, as qsd (built without debug) sends them, and
// "q_empty" is "0"; otherwise they name the Go types ("blockdev.resizeArgs",
// "q_obj_" and a path for anonymous ones), for documentation.
//
// problems lists what could not be described: a handler without a
// signature, a type that decodes itself with no declared shape. The
// schema says "any" in their place; tests make sure there are none.
func (s *Server) Schema(masked bool) ([]SchemaInfo, []error) {
	s.cmdMu.RLock()
	cmds := maps.Clone(s.cmds)
	s.cmdMu.RUnlock()
	s.schemaMu.Lock()
	shapes := maps.Clone(s.shapes)
	events := maps.Clone(s.events)
	s.schemaMu.Unlock()

	b := &schemaBuilder{shapes: shapes, names: map[reflect.Type]string{}, seen: map[string]bool{}}
	b.ref(emptyType, "")
	var out []SchemaInfo
	for _, name := range slices.Sorted(maps.Keys(cmds)) {
		out = append(out, b.command(name, cmds[name]))
	}
	for _, name := range slices.Sorted(maps.Keys(events)) {
		out = append(out, SchemaInfo{Name: name, MetaType: MetaEvent,
			Event: &SchemaInfoEvent{ArgType: b.ref(events[name], name+"-arg")}})
	}
	out = append(out, b.types...)
	if masked {
		mask(out)
	}
	return out, b.problems
}

// The builtin types and their JSON types.
var builtinJSONTypes = map[string]string{
	"str": "string", "int": "int", "number": "number", "bool": "boolean", "null": "null", "any": "value",
}

const emptyName = "q_empty"

var shapeOferType = reflect.TypeFor[shapeOfer]()

type schemaBuilder struct {
	shapes   map[reflect.Type]Shape
	names    map[reflect.Type]string // type → name of its entity
	seen     map[string]bool         // names of the entities in types
	types    []SchemaInfo
	problems []error
}

func (b *schemaBuilder) problem(format string, a ...any) {
	b.problems = append(b.problems, fmt.Errorf("qmp schema: "+format, a...))
}

func (b *schemaBuilder) command(name string, h Handler) SchemaInfo {
	si := SchemaInfo{Name: name, MetaType: MetaCommand}
	sh, ok := h.(Signed)
	if !ok {
		b.problem("command %s has no signature: register it with qmp.Command, or qmp.Declare for a handler that decodes its own arguments", name)
		si.Command = &SchemaInfoCommand{ArgType: b.builtin("any"), RetType: b.builtin("any")}
		return si
	}
	sig := sh.QMPSignature()
	si.Features = withUnstable(name, sig.Features)
	si.Command = &SchemaInfoCommand{ArgType: b.ref(sig.Arg, name+"-arg"), RetType: b.ref(sig.Ret, name+"-ret")}
	return si
}

// withUnstable adds the "unstable" feature that an "x-" name implies.
func withUnstable(name string, features []string) []string {
	if strings.HasPrefix(name, "x-") && !slices.Contains(features, "unstable") {
		features = append(slices.Clone(features), "unstable")
	}
	return features
}

// add appends a type entity unless one of its name exists.
func (b *schemaBuilder) add(si SchemaInfo) string {
	if !b.seen[si.Name] {
		b.seen[si.Name] = true
		b.types = append(b.types, si)
	}
	return si.Name
}

func (b *schemaBuilder) builtin(name string) string {
	return b.add(SchemaInfo{Name: name, MetaType: MetaBuiltin, Builtin: &SchemaInfoBuiltin{JSONType: builtinJSONTypes[name]}})
}

// typeName names a named Go type by its package and name; an anonymous
// one by where it is used.
func typeName(t reflect.Type, where string) string {
	if t.Name() == "" || strings.ContainsAny(t.Name(), "[]") {
		return "q_obj_" + where
	}
	return path.Base(t.PkgPath()) + "." + t.Name()
}

// ref returns the name of t's entity, describing t first if needed. where
// names the place of an anonymous type.
func (b *schemaBuilder) ref(t reflect.Type, where string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n, ok := b.names[t]; ok {
		return n
	}
	if sh, ok := b.shapes[t]; ok {
		return b.shape(t, sh, where)
	}
	switch {
	case t == nullType:
		return b.builtin("null")
	case t == rawMessageType || t.Kind() == reflect.Interface || t.Kind() == reflect.Map:
		return b.builtin("any")
	case t.Implements(shapeOferType):
		return b.ref(reflect.Zero(t).Interface().(shapeOfer).qmpShapeOf(), where)
	case reflect.PointerTo(t).Implements(unmarshalerType):
		b.problem("%s decodes itself (qmp.Unmarshaler): declare its shape with Server.DeclareType", t)
		return b.builtin("any")
	}
	switch t.Kind() {
	case reflect.String:
		if e := enumOf(t); e != nil {
			return b.enum(t, typeName(t, where), e.EnumValues())
		}
		return b.builtin("str")
	case reflect.Bool:
		return b.builtin("bool")
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Int16, reflect.Int8,
		reflect.Uint, reflect.Uint64, reflect.Uintptr, reflect.Uint32, reflect.Uint16, reflect.Uint8:
		return b.builtin("int")
	case reflect.Float64, reflect.Float32:
		return b.builtin("number")
	case reflect.Slice:
		elem := b.ref(t.Elem(), where)
		return b.add(SchemaInfo{Name: "[" + elem + "]", MetaType: MetaArray, Array: &SchemaInfoArray{ElementType: elem}})
	case reflect.Struct:
		return b.object(t, where)
	}
	b.problem("%s cannot be described", t)
	return b.builtin("any")
}

func (b *schemaBuilder) enum(t reflect.Type, name string, values []string) string {
	if t != nil {
		b.names[t] = name
	}
	e := &SchemaInfoEnum{Values: values}
	for _, v := range values {
		e.Members = append(e.Members, SchemaInfoEnumMember{Name: v, Features: withUnstable(v, nil)})
	}
	return b.add(SchemaInfo{Name: name, MetaType: MetaEnum, Enum: e})
}

// object describes a struct. Its name is taken before its members are
// described, so that a type may contain itself.
func (b *schemaBuilder) object(t reflect.Type, where string) string {
	fields := structFields(t).fields
	name := typeName(t, where)
	if len(fields) == 0 {
		name = emptyName
	}
	b.names[t] = name
	if b.seen[name] {
		return name
	}
	i := b.reserve(name)
	b.types[i].Object = &SchemaInfoObject{Members: b.members(fields, name)}
	return name
}

// reserve appends an object entity to be filled in and returns its index.
func (b *schemaBuilder) reserve(name string) int {
	b.seen[name] = true
	b.types = append(b.types, SchemaInfo{Name: name, MetaType: MetaObject})
	return len(b.types) - 1
}

func (b *schemaBuilder) members(fields []fieldInfo, owner string) []SchemaInfoObjectMember {
	ms := []SchemaInfoObjectMember{}
	for _, f := range fields {
		m := SchemaInfoObjectMember{
			Name:     f.name,
			Type:     b.ref(f.typ, strings.TrimPrefix(owner, "q_obj_")+"-"+f.name),
			Features: withUnstable(f.name, f.features),
		}
		if f.optional {
			m.Default = json.RawMessage("null")
		}
		ms = append(ms, m)
	}
	return ms
}

func (b *schemaBuilder) shape(t reflect.Type, sh Shape, where string) string {
	switch sh := sh.(type) {
	case AnyValue:
		b.names[t] = b.builtin("any")
	case Alternate:
		name := sh.Name
		if name == "" {
			name = typeName(t, where)
		}
		b.names[t] = name
		alt := &SchemaInfoAlternate{}
		for _, at := range sh.Types {
			alt.Members = append(alt.Members, SchemaInfoAlternateMember{Type: b.ref(at, name)})
		}
		b.add(SchemaInfo{Name: name, MetaType: MetaAlternate, Alternate: alt})
	case Union:
		b.union(t, sh, where)
	}
	return b.names[t]
}

func (b *schemaBuilder) union(t reflect.Type, u Union, where string) {
	name := u.Name
	if name == "" {
		name = typeName(t, where)
	}
	b.names[t] = name
	i := b.reserve(name)
	obj := &SchemaInfoObject{Members: b.members(structFields(u.Base).fields, name), Tag: u.Tag}
	vs := u.Variants()
	tag := slices.IndexFunc(obj.Members, func(m SchemaInfoObjectMember) bool { return m.Name == u.Tag })
	if tag < 0 {
		b.problem("union %s: the base %s has no tag member %q", name, u.Base, u.Tag)
	} else if obj.Members[tag].Type == "str" {
		cases := make([]string, len(vs))
		for j, v := range vs {
			cases[j] = v.Case
		}
		obj.Members[tag].Type = b.enum(nil, name+"-"+u.Tag, cases)
	}
	for _, v := range vs {
		vt := emptyType
		if v.Type != nil {
			vt = v.Type
		}
		obj.Variants = append(obj.Variants, SchemaInfoObjectVariant{Case: v.Case, Type: b.ref(vt, name+"-"+v.Case)})
	}
	b.types[i].Object = obj
}

// mask replaces the type names by numbers in order of appearance, as QEMU
// does, keeping the builtins' names.
func mask(sc []SchemaInfo) {
	num := map[string]string{emptyName: "0"}
	var m func(string) string
	m = func(n string) string {
		if _, ok := builtinJSONTypes[n]; ok {
			return n
		}
		if inner, ok := strings.CutPrefix(n, "["); ok {
			return "[" + m(strings.TrimSuffix(inner, "]")) + "]"
		}
		if x, ok := num[n]; ok {
			return x
		}
		num[n] = strconv.Itoa(len(num))
		return num[n]
	}
	for i := range sc {
		sc[i].renameTypes(m)
	}
}

// renameTypes applies f to every type name in the entity.
func (si *SchemaInfo) renameTypes(f func(string) string) {
	switch si.MetaType {
	case MetaCommand:
		si.Command.ArgType, si.Command.RetType = f(si.Command.ArgType), f(si.Command.RetType)
		return
	case MetaEvent:
		si.Event.ArgType = f(si.Event.ArgType)
		return
	}
	si.Name = f(si.Name)
	switch si.MetaType {
	case MetaArray:
		si.Array.ElementType = f(si.Array.ElementType)
	case MetaAlternate:
		for j := range si.Alternate.Members {
			si.Alternate.Members[j].Type = f(si.Alternate.Members[j].Type)
		}
	case MetaObject:
		for j := range si.Object.Members {
			si.Object.Members[j].Type = f(si.Object.Members[j].Type)
		}
		for j := range si.Object.Variants {
			si.Object.Variants[j].Type = f(si.Object.Variants[j].Type)
		}
	}
}
