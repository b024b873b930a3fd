package blockdev

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/blockd/blockd/pkg/block"
)

// ParseKeyval parses QEMU's command-line option syntax: comma-separated
// key=value pairs, ",," for a literal comma, dotted keys for nesting and
// numeric key parts for lists. implied names the key of a first item that
// has no '=' ("" for none).
func ParseKeyval(s, implied string) (map[string]any, error) {
	root := map[string]any{}
	first := true
	for len(s) > 0 {
		var item string
		item, s = nextItem(s)
		key, val, ok := strings.Cut(item, "=")
		if !ok {
			if !first || implied == "" {
				return nil, fmt.Errorf("Expected '=' after parameter '%s'", item)
			}
			key, val = implied, item
		}
		first = false
		if key == "" {
			return nil, fmt.Errorf("Invalid parameter ''")
		}
		if err := setPath(root, strings.Split(key, "."), val, key); err != nil {
			return nil, err
		}
	}
	tree, err := listify(root, "")
	if err != nil {
		return nil, err
	}
	return tree.(map[string]any), nil
}

// nextItem splits off one item, turning ",," into ",".
func nextItem(s string) (item, rest string) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				b.WriteByte(',')
				i++
				continue
			}
			return b.String(), s[i+1:]
		}
		b.WriteByte(s[i])
	}
	return b.String(), ""
}

func setPath(m map[string]any, parts []string, val, key string) error {
	for i, p := range parts {
		if p == "" {
			return fmt.Errorf("Invalid parameter '%s'", key)
		}
		if i == len(parts)-1 {
			if _, dup := m[p]; dup {
				return fmt.Errorf("Parameter '%s' given twice", key)
			}
			m[p] = val
			return nil
		}
		next, ok := m[p]
		if !ok {
			nm := map[string]any{}
			m[p] = nm
			m = nm
			continue
		}
		nm, ok := next.(map[string]any)
		if !ok {
			return fmt.Errorf("Parameters '%s.*' used inconsistently", strings.Join(parts[:i+1], "."))
		}
		m = nm
	}
	return nil
}

// listify turns objects whose keys are 0, 1, ... into lists.
func listify(v any, path string) (any, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return v, nil
	}
	numeric := len(m) > 0
	for k := range m {
		if _, err := strconv.Atoi(k); err != nil {
			numeric = false
		}
	}
	for k, x := range m {
		y, err := listify(x, path+k+".")
		if err != nil {
			return nil, err
		}
		m[k] = y
	}
	if !numeric {
		return m, nil
	}
	keys := make([]int, 0, len(m))
	for k := range m {
		i, _ := strconv.Atoi(k)
		keys = append(keys, i)
	}
	sort.Ints(keys)
	list := make([]any, len(keys))
	for i, k := range keys {
		if i != k {
			return nil, fmt.Errorf("Parameter '%s%d' missing", path, i)
		}
		list[i] = m[strconv.Itoa(k)]
	}
	return list, nil
}

var (
	nodeRefType       = reflect.TypeOf(block.NodeRef{})
	nodeRefOrNullType = reflect.TypeOf(block.NodeRefOrNull{})
	rawType           = reflect.TypeOf(json.RawMessage(nil))
)

// KeyvalBlockdev converts a parsed --blockdev into BlockdevOptions JSON,
// typing each value by the driver's options.
func KeyvalBlockdev(tree map[string]any) (json.RawMessage, error) {
	v, err := typedBlockdev(tree, "")
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

func typedBlockdev(tree map[string]any, path string) (map[string]any, error) {
	name, _ := tree["driver"].(string)
	d := block.LookupDriver(name)
	if d == nil {
		return nil, fmt.Errorf("Parameter '%s' does not accept value '%s'", join(path, "driver"), name)
	}
	return typedObject(tree, path, reflect.TypeOf(block.CommonOptions{}), reflect.TypeOf(d.NewOptions()).Elem())
}

// KeyvalCreate converts a parsed option tree into blockdev-create's
// options, typed by the driver's create options.
func KeyvalCreate(tree map[string]any) (json.RawMessage, error) {
	name, _ := tree["driver"].(string)
	c := block.LookupCreator(name)
	if c == nil {
		return nil, fmt.Errorf("Parameter 'driver' does not accept value '%s'", name)
	}
	return KeyvalTyped(tree, reflect.TypeFor[struct {
		Driver string `json:"driver"`
	}](), c.Options)
}

// KeyvalTyped converts a parsed option tree into JSON typed by the Go
// structs the option is decoded into.
func KeyvalTyped(tree map[string]any, types ...reflect.Type) (json.RawMessage, error) {
	v, err := typedObject(tree, "", types...)
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// fieldType finds the Go type of the member called name in the structs.
func fieldType(name string, types []reflect.Type) (reflect.Type, bool) {
	for _, t := range types {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			continue
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if f.Anonymous {
				if ft, ok := fieldType(name, []reflect.Type{f.Type}); ok {
					return ft, true
				}
				continue
			}
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if tag == name {
				return f.Type, true
			}
		}
	}
	return nil, false
}

func typedObject(tree map[string]any, path string, types ...reflect.Type) (map[string]any, error) {
	out := map[string]any{}
	for k, v := range tree {
		t, ok := fieldType(k, types)
		if !ok {
			out[k] = v // the strict decoder names it as unexpected
			continue
		}
		x, err := typedValue(v, join(path, k), t)
		if err != nil {
			return nil, err
		}
		out[k] = x
	}
	return out, nil
}

func typedValue(v any, path string, t reflect.Type) (any, error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == nodeRefType || t == nodeRefOrNullType:
		if m, ok := v.(map[string]any); ok {
			return typedBlockdev(m, path)
		}
		return v, nil
	case t == rawType || t.Kind() == reflect.Interface:
		return v, nil
	}
	s, isString := v.(string)
	switch t.Kind() {
	case reflect.String:
		return v, nil
	case reflect.Bool:
		if !isString {
			return v, nil
		}
		switch s {
		case "on", "yes", "true", "y":
			return true, nil
		case "off", "no", "false", "n":
			return false, nil
		}
		return nil, fmt.Errorf("Parameter '%s' expects 'on' or 'off'", path)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if !isString {
			return v, nil
		}
		n, err := strconv.ParseInt(s, 0, 64)
		if err != nil {
			return nil, fmt.Errorf("Parameter '%s' expects integer", path)
		}
		return n, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if !isString {
			return v, nil
		}
		n, err := parseSize(s)
		if err != nil {
			return nil, fmt.Errorf("Parameter '%s' expects size", path)
		}
		return n, nil
	case reflect.Float32, reflect.Float64:
		if !isString {
			return v, nil
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("Parameter '%s' expects number", path)
		}
		return f, nil
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return v, nil
		}
		return typedObject(m, path, t)
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			return v, nil
		}
		out := make([]any, len(l))
		for i, x := range l {
			y, err := typedValue(x, fmt.Sprintf("%s.%d", path, i), t.Elem())
			if err != nil {
				return nil, err
			}
			out[i] = y
		}
		return out, nil
	}
	return v, nil
}

// parseSize accepts a number with an optional k, M, G, T, P, E suffix
// (powers of 1024), as QEMU's size options do.
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		case 'E':
			mult = 1 << 60
		case 'b', 'B':
			mult = 1
		}
		if mult != 1 || s[n-1] == 'b' || s[n-1] == 'B' {
			s = s[:n-1]
		}
	}
	n, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		return 0, err
	}
	if n > ^uint64(0)/mult {
		return 0, fmt.Errorf("size too large")
	}
	return n * mult, nil
}

// KeyvalObject converts a parsed --object into object-add JSON. Every
// property of the object types blockd knows (throttle-group) other than
// qom-type and id is an integer.
func KeyvalObject(tree map[string]any) (json.RawMessage, error) {
	var conv func(v any, path string) (any, error)
	conv = func(v any, path string) (any, error) {
		switch x := v.(type) {
		case map[string]any:
			out := map[string]any{}
			for k, y := range x {
				z, err := conv(y, join(path, k))
				if err != nil {
					return nil, err
				}
				out[k] = z
			}
			return out, nil
		case string:
			if path == "qom-type" || path == "id" {
				return x, nil
			}
			n, err := parseSize(x)
			if err != nil {
				return nil, fmt.Errorf("Parameter '%s' expects a number", path)
			}
			return n, nil
		}
		return v, nil
	}
	v, err := conv(tree, "")
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}
