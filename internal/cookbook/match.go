package cookbook

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
)

// Elided is the placeholder of the patterns in <- lines:
//
//	"..."                 as a value: any value (a timestamp, an offset)
//	"...": "..."          as an object member: the object may have more
//	                      members than the pattern shows
//	[..., "..."]          as an array's last element: more elements may
//	                      follow the ones shown
//
// Everything else must be equal. An event's timestamp is never compared.
const Elided = "..."

// Match reports how got (decoded JSON) differs from the pattern, or nil.
func Match(pattern, got any) error { return match("", pattern, got) }

// MatchJSON is Match on JSON texts.
func MatchJSON(pattern, got []byte) error {
	var p, g any
	if err := json.Unmarshal(pattern, &p); err != nil {
		return fmt.Errorf("pattern: %v", err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		return fmt.Errorf("reply: %v", err)
	}
	return Match(p, g)
}

func match(path string, pattern, got any) error {
	if pattern == Elided {
		return nil
	}
	switch p := pattern.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: got %s, want an object", where(path), show(got))
		}
		return matchObject(path, p, g)
	case []any:
		g, ok := got.([]any)
		if !ok {
			return fmt.Errorf("%s: got %s, want an array", where(path), show(got))
		}
		open := len(p) > 0 && p[len(p)-1] == Elided
		if open {
			p = p[:len(p)-1]
		}
		if len(g) < len(p) || !open && len(g) != len(p) {
			return fmt.Errorf("%s: got %d elements, want %d: %s", where(path), len(g), len(p), show(got))
		}
		for i := range p {
			if err := match(fmt.Sprintf("%s[%d]", path, i), p[i], g[i]); err != nil {
				return err
			}
		}
		return nil
	}
	if !reflect.DeepEqual(pattern, got) {
		return fmt.Errorf("%s: got %s, want %s", where(path), show(got), show(pattern))
	}
	return nil
}

func matchObject(path string, p, g map[string]any) error {
	_, open := p[Elided]
	var keys []string
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == Elided {
			continue
		}
		v, ok := g[k]
		if !ok {
			return fmt.Errorf("%s: no member %q in %s", where(path), k, show(g))
		}
		if err := match(path+"."+k, p[k], v); err != nil {
			return err
		}
	}
	if !open {
		for k := range g {
			if _, ok := p[k]; !ok {
				return fmt.Errorf("%s: unexpected member %q in %s", where(path), k, show(g))
			}
		}
	}
	return nil
}

func where(path string) string {
	if path == "" {
		return "reply"
	}
	return "reply" + path
}

func show(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}
