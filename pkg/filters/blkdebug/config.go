package blkdebug

import (
	"bufio"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// readConfig reads the rules of a blkdebug config file: QEMU's ini-style
// format with [inject-error] and [set-state] sections of key = "value"
// lines, the keys being the members of the QMP rule objects.
func readConfig(path string) ([]*rule, error) {
	f, err := os.Open(path)
	if err != nil {
		var e syscall.Errno
		if !errors.As(err, &e) {
			e = syscall.EIO
		}
		return nil, block.Errorf(block.ErrInvalid, "Could not read blkdebug config file: %s", block.Strerror(e))
	}
	defer f.Close()
	bad := block.Errorf(block.ErrInvalid, "Could not parse blkdebug config file")

	type section struct {
		group string
		keys  map[string]string
	}
	var sections []*section
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			name, _, ok := strings.Cut(line[1:], "]")
			if !ok {
				return nil, bad
			}
			name, _, _ = strings.Cut(name, " ") // [group "id"]
			if name != "inject-error" && name != "set-state" {
				return nil, bad
			}
			sections = append(sections, &section{group: name, keys: map[string]string{}})
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || len(sections) == 0 {
			return nil, bad
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if len(val) < 2 || val[0] != '"' || val[len(val)-1] != '"' {
			return nil, bad
		}
		sections[len(sections)-1].keys[key] = val[1 : len(val)-1]
	}
	if sc.Err() != nil {
		return nil, bad
	}

	var rs []*rule
	// Inject-error rules come before set-state rules, as in QEMU.
	for _, group := range []string{"inject-error", "set-state"} {
		for _, s := range sections {
			if s.group != group {
				continue
			}
			r, err := configRule(s.group, s.keys)
			if err != nil {
				return nil, err
			}
			rs = append(rs, r)
		}
	}
	return rs, nil
}

func configRule(group string, keys map[string]string) (*rule, error) {
	allowed := []string{"event", "state", "new_state"}
	if group == "inject-error" {
		allowed = []string{"event", "state", "iotype", "errno", "sector", "once", "immediately"}
	}
	for k := range keys {
		if !slices.Contains(allowed, k) {
			return nil, block.Errorf(block.ErrInvalid, "Invalid parameter '%s'", k)
		}
	}
	ev, ok := keys["event"]
	if !ok {
		return nil, block.Errorf(block.ErrInvalid, "Missing event name for rule")
	}
	if !slices.Contains(events, ev) {
		return nil, block.Errorf(block.ErrInvalid, "invalid parameter value: %s", ev)
	}
	num := func(k string) (*int64, error) {
		v, ok := keys[k]
		if !ok {
			return nil, nil
		}
		n, err := strconv.ParseInt(v, 0, 64)
		if err != nil {
			return nil, block.Errorf(block.ErrInvalid, "Parameter '%s' expects a number", k)
		}
		return &n, nil
	}
	boolean := func(k string) (*bool, error) {
		v, ok := keys[k]
		if !ok {
			return nil, nil
		}
		switch v {
		case "on", "yes", "true", "y":
			b := true
			return &b, nil
		case "off", "no", "false", "n":
			b := false
			return &b, nil
		}
		return nil, block.Errorf(block.ErrInvalid, "Parameter '%s' expects 'on' or 'off'", k)
	}
	state, err := num("state")
	if err != nil {
		return nil, err
	}
	if group == "set-state" {
		ns, err := num("new_state")
		if err != nil {
			return nil, err
		}
		o := SetStateOptions{Event: Event(ev), State: state}
		if ns != nil {
			o.NewState = *ns
		}
		return setStateRule(o), nil
	}
	o := InjectErrorOptions{Event: Event(ev), State: state}
	if t, ok := keys["iotype"]; ok {
		if !slices.Contains(ioTypes, t) {
			return nil, block.Errorf(block.ErrInvalid, "invalid parameter value: %s", t)
		}
		it := IOType(t)
		o.IOType = &it
	}
	if o.Errno, err = num("errno"); err != nil {
		return nil, err
	}
	if o.Sector, err = num("sector"); err != nil {
		return nil, err
	}
	if o.Once, err = boolean("once"); err != nil {
		return nil, err
	}
	if o.Immediately, err = boolean("immediately"); err != nil {
		return nil, err
	}
	return injectRule(o), nil
}
