package block

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// CommonOptions are the members of QMP's BlockdevOptions that every driver
// shares.
type CommonOptions struct {
	Driver       string        `json:"driver"`
	NodeName     string        `json:"node-name,omitempty"`
	Discard      DiscardMode   `json:"discard,omitempty"`
	Cache        *CacheOptions `json:"cache,omitempty"`
	ReadOnly     *bool         `json:"read-only,omitempty"`
	AutoReadOnly *bool         `json:"auto-read-only,omitempty"`
	ForceShare   *bool         `json:"force-share,omitempty"`
	DetectZeroes DetectZeroes  `json:"detect-zeroes,omitempty"`
}

// CacheOptions is BlockdevCacheOptions.
type CacheOptions struct {
	Direct  *bool `json:"direct,omitempty"`
	NoFlush *bool `json:"no-flush,omitempty"`
}

// Direct reports cache.direct.
func (o *CommonOptions) Direct() bool {
	return o.Cache != nil && o.Cache.Direct != nil && *o.Cache.Direct
}

// NoFlush reports cache.no-flush.
func (o *CommonOptions) NoFlush() bool {
	return o.Cache != nil && o.Cache.NoFlush != nil && *o.Cache.NoFlush
}

// DiscardMode is BlockdevDiscardOptions.
type DiscardMode string

const (
	DiscardIgnore DiscardMode = "ignore"
	DiscardUnmap  DiscardMode = "unmap"
)

// EnumValues implements qmp.Enum.
func (DiscardMode) EnumValues() []string { return []string{"ignore", "unmap"} }

// DetectZeroes is BlockdevDetectZeroesOptions.
type DetectZeroes string

const (
	DetectZeroesOff   DetectZeroes = "off"
	DetectZeroesOn    DetectZeroes = "on"
	DetectZeroesUnmap DetectZeroes = "unmap"
)

// EnumValues implements qmp.Enum.
func (DetectZeroes) EnumValues() []string { return []string{"off", "on", "unmap"} }

// NodeRef is QMP's BlockdevRef (and BlockdevRefOrNull): a child given
// either as the name of an existing node or as the options of a new one,
// or, where allowed, null for "no child".
type NodeRef struct {
	Name   string          // an existing node's name
	Inline json.RawMessage // options of a node to open
	Null   bool            // explicit null
}

// IsZero reports whether the reference is unset.
func (r NodeRef) IsZero() bool { return r.Name == "" && r.Inline == nil && !r.Null }

// UnmarshalQMP implements qmp.Unmarshaler for BlockdevRef.
func (r *NodeRef) UnmarshalQMP(raw json.RawMessage, path string) error {
	return r.unmarshal(raw, path, false)
}

func (r *NodeRef) unmarshal(raw json.RawMessage, path string, allowNull bool) error {
	raw = bytes.TrimSpace(raw)
	typ := "BlockdevRef"
	if allowNull {
		typ = "BlockdevRefOrNull"
	}
	switch {
	case len(raw) > 0 && raw[0] == '{':
		r.Inline = append(json.RawMessage(nil), raw...)
	case len(raw) > 0 && raw[0] == '"':
		if err := json.Unmarshal(raw, &r.Name); err != nil {
			return fmt.Errorf("Invalid parameter type for '%s', expected: %s", path, typ)
		}
	case allowNull && string(raw) == "null":
		r.Null = true
	default:
		return fmt.Errorf("Invalid parameter type for '%s', expected: %s", path, typ)
	}
	return nil
}

// MarshalJSON writes the reference back as QMP would take it.
func (r NodeRef) MarshalJSON() ([]byte, error) {
	switch {
	case r.Inline != nil:
		return r.Inline, nil
	case r.Null:
		return []byte("null"), nil
	}
	return json.Marshal(r.Name)
}

// NodeRefOrNull is a NodeRef that also accepts null (QMP's
// BlockdevRefOrNull, used for "backing").
type NodeRefOrNull struct{ NodeRef }

// UnmarshalQMP implements qmp.Unmarshaler.
func (r *NodeRefOrNull) UnmarshalQMP(raw json.RawMessage, path string) error {
	return r.unmarshal(raw, path, true)
}

// validNodeName applies QEMU's rules for user-given node names and job
// IDs: a letter first, then letters, digits, '-', '.', '_'.
func validNodeName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if i == 0 && !letter {
			return false
		}
		if !letter && !(c >= '0' && c <= '9') && c != '-' && c != '.' && c != '_' {
			return false
		}
	}
	return true
}

// ValidID reports whether s is a valid node name or job ID by QEMU's rules.
func ValidID(s string) bool { return validNodeName(s) }

// maxNodeName is QEMU's limit on node names (32 bytes with the NUL).
const maxNodeName = 31

// setDefaults returns raw (a JSON object) with the members of def added
// where raw lacks them. Used to pass inherited options to inline children.
func setDefaults(raw json.RawMessage, def map[string]any) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	changed := false
	for k, v := range def {
		if _, ok := m[k]; ok {
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		m[k] = b
		changed = true
	}
	if !changed {
		return raw, nil
	}
	return json.Marshal(m)
}

func marshalJSON(v any) (json.RawMessage, error) { return json.Marshal(v) }

// UnmarshalJSON lets encoding/json decode a NodeRef too.
func (r *NodeRef) UnmarshalJSON(b []byte) error { return r.unmarshal(b, "ref", false) }

// UnmarshalJSON lets encoding/json decode a NodeRefOrNull too.
func (r *NodeRefOrNull) UnmarshalJSON(b []byte) error { return r.unmarshal(b, "ref", true) }
