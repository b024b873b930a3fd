package qmp

import (
	"encoding/json"
	"fmt"
)

// SchemaInfo is one entity of query-qmp-schema: a command, an event or a
// type, in the format of QEMU's qapi/introspect.json. Exactly one of the
// variant pointers is set, the one MetaType names; it is encoded flat,
// beside Name, MetaType and Features, as QEMU's union is.
type SchemaInfo struct {
	Name     string   `json:"name"`
	MetaType MetaType `json:"meta-type"`
	Features []string `json:"features,omitempty"`

	Builtin   *SchemaInfoBuiltin   `json:"-"`
	Enum      *SchemaInfoEnum      `json:"-"`
	Array     *SchemaInfoArray     `json:"-"`
	Object    *SchemaInfoObject    `json:"-"`
	Alternate *SchemaInfoAlternate `json:"-"`
	Command   *SchemaInfoCommand   `json:"-"`
	Event     *SchemaInfoEvent     `json:"-"`
}

// MetaType is SchemaMetaType.
type MetaType string

// The meta-types.
const (
	MetaBuiltin   MetaType = "builtin"
	MetaEnum      MetaType = "enum"
	MetaArray     MetaType = "array"
	MetaObject    MetaType = "object"
	MetaAlternate MetaType = "alternate"
	MetaCommand   MetaType = "command"
	MetaEvent     MetaType = "event"
)

// EnumValues implements Enum.
func (MetaType) EnumValues() []string {
	return []string{"builtin", "enum", "array", "object", "alternate", "command", "event"}
}

// SchemaInfoBuiltin is a builtin type: str, int, number, bool, null, any.
type SchemaInfoBuiltin struct {
	JSONType string `json:"json-type"`
}

// SchemaInfoEnum is an enumeration. Values repeats the members' names for
// older clients, as QEMU 7.2 does.
type SchemaInfoEnum struct {
	Members []SchemaInfoEnumMember `json:"members"`
	Values  []string               `json:"values" qmp:"deprecated"`
}

// SchemaInfoEnumMember is one value of an enumeration.
type SchemaInfoEnumMember struct {
	Name     string   `json:"name"`
	Features []string `json:"features,omitempty"`
}

// SchemaInfoArray is an array type, named "[element]".
type SchemaInfoArray struct {
	ElementType string `json:"element-type"`
}

// SchemaInfoObject is a struct or a flat union: its members, and for a
// union the tag member and the members each tag value adds.
type SchemaInfoObject struct {
	Members  []SchemaInfoObjectMember  `json:"members"`
	Tag      string                    `json:"tag,omitempty"`
	Variants []SchemaInfoObjectVariant `json:"variants,omitempty"`
}

// SchemaInfoObjectMember is one member of an object. An optional member
// has "default": null (QEMU never announces another default).
type SchemaInfoObjectMember struct {
	Name     string          `json:"name"`
	Type     string          `json:"type"`
	Default  json.RawMessage `json:"default,omitempty"`
	Features []string        `json:"features,omitempty"`
}

// Optional reports whether the member may be left out.
func (m SchemaInfoObjectMember) Optional() bool { return m.Default != nil }

// SchemaInfoObjectVariant is the object type whose members a union adds
// when its tag has the value Case.
type SchemaInfoObjectVariant struct {
	Case string `json:"case"`
	Type string `json:"type"`
}

// SchemaInfoAlternate is a value of one of several types, told apart by
// their JSON type.
type SchemaInfoAlternate struct {
	Members []SchemaInfoAlternateMember `json:"members"`
}

// SchemaInfoAlternateMember is one alternative.
type SchemaInfoAlternateMember struct {
	Type string `json:"type"`
}

// SchemaInfoCommand is a command: the object type of its arguments and the
// type of its result.
type SchemaInfoCommand struct {
	ArgType  string `json:"arg-type"`
	RetType  string `json:"ret-type"`
	AllowOOB bool   `json:"allow-oob,omitempty"`
}

// SchemaInfoEvent is an event and the object type of its data.
type SchemaInfoEvent struct {
	ArgType string `json:"arg-type"`
}

// schemaInfoBase is the members every entity has; MarshalJSON adds the
// variant's.
type schemaInfoBase struct {
	Name     string   `json:"name"`
	MetaType MetaType `json:"meta-type"`
	Features []string `json:"features,omitempty"`
}

// variant returns the set variant pointer for the meta-type.
func (si *SchemaInfo) variant() any {
	switch si.MetaType {
	case MetaBuiltin:
		return si.Builtin
	case MetaEnum:
		return si.Enum
	case MetaArray:
		return si.Array
	case MetaObject:
		return si.Object
	case MetaAlternate:
		return si.Alternate
	case MetaCommand:
		return si.Command
	case MetaEvent:
		return si.Event
	}
	return nil
}

// allocVariant sets a fresh variant for the meta-type and returns it.
func (si *SchemaInfo) allocVariant() (any, error) {
	switch si.MetaType {
	case MetaBuiltin:
		si.Builtin = &SchemaInfoBuiltin{}
	case MetaEnum:
		si.Enum = &SchemaInfoEnum{}
	case MetaArray:
		si.Array = &SchemaInfoArray{}
	case MetaObject:
		si.Object = &SchemaInfoObject{}
	case MetaAlternate:
		si.Alternate = &SchemaInfoAlternate{}
	case MetaCommand:
		si.Command = &SchemaInfoCommand{}
	case MetaEvent:
		si.Event = &SchemaInfoEvent{}
	default:
		return nil, fmt.Errorf("qmp: unknown meta-type %q", si.MetaType)
	}
	return si.variant(), nil
}

// MarshalJSON writes the entity flat: base members, then the variant's.
func (si SchemaInfo) MarshalJSON() ([]byte, error) {
	m := map[string]json.RawMessage{}
	for _, part := range []any{schemaInfoBase{si.Name, si.MetaType, si.Features}, si.variant()} {
		b, err := json.Marshal(part)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, err
		}
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads an entity of any QMP server's schema (masked or
// not), so that tests and clients can inspect qsd's schema as well.
func (si *SchemaInfo) UnmarshalJSON(b []byte) error {
	var base schemaInfoBase
	if err := json.Unmarshal(b, &base); err != nil {
		return err
	}
	*si = SchemaInfo{Name: base.Name, MetaType: base.MetaType, Features: base.Features}
	v, err := si.allocVariant()
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// CheckSchema reports what makes a schema (any server's, masked or not)
// ill-formed: a type referenced but not defined, a command or event whose
// arguments are not an object, a union whose tag is not one of its members
// or whose variant is no object.
func CheckSchema(sc []SchemaInfo) []error {
	byName := map[string]*SchemaInfo{}
	for i := range sc {
		byName[sc[i].Name] = &sc[i]
	}
	var errs []error
	ref := func(from, name string, want ...MetaType) {
		e, ok := byName[name]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: type %q is not defined", from, name))
		case len(want) > 0 && e.MetaType != want[0]:
			errs = append(errs, fmt.Errorf("%s: type %q is %s, not %s", from, name, e.MetaType, want[0]))
		}
	}
	for _, e := range sc {
		switch e.MetaType {
		case MetaCommand:
			ref(e.Name, e.Command.ArgType, MetaObject)
			ref(e.Name, e.Command.RetType)
		case MetaEvent:
			ref(e.Name, e.Event.ArgType, MetaObject)
		case MetaArray:
			ref(e.Name, e.Array.ElementType)
		case MetaAlternate:
			for _, m := range e.Alternate.Members {
				ref(e.Name, m.Type)
			}
		case MetaObject:
			tagged := e.Object.Tag == ""
			for _, m := range e.Object.Members {
				ref(e.Name+"."+m.Name, m.Type)
				tagged = tagged || m.Name == e.Object.Tag
			}
			if !tagged {
				errs = append(errs, fmt.Errorf("%s: tag %q is not a member", e.Name, e.Object.Tag))
			}
			for _, v := range e.Object.Variants {
				ref(e.Name+"+"+v.Case, v.Type, MetaObject)
			}
		}
	}
	return errs
}
