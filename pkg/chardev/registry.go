// Package chardev holds the daemon's character devices: the sockets and
// stdio its monitors talk on, and the ones chardev-add creates (ring
// buffers, null, files, sockets nobody attaches to). It is qsd 7.2's
// /chardevs container and the QMP commands on it; it knows nothing of
// blocks.
package chardev

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
)

// Registry is the set of chardevs by label.
type Registry struct {
	mu   sync.Mutex
	devs map[string]*Device
}

// New returns an empty registry.
func New() *Registry { return &Registry{devs: map[string]*Device{}} }

// Device is one chardev.
type Device struct {
	label string
	kind  Kind
	be    backend
	log   *os.File // the logfile, or nil

	mu       sync.Mutex
	frontend bool // a monitor uses it
}

// backend is what a kind of chardev does.
type backend interface {
	// filename is query-chardev's filename, if the backend words it
	// itself; "" means the kind's name, as qsd defaults it.
	filename() string
	close() error
}

// Label is the chardev's id.
func (d *Device) Label() string { return d.label }

// QOMType is the chardev's QOM type, "chardev-socket" and so on.
func (d *Device) QOMType() string { return "chardev-" + string(d.kind) }

// Filename is query-chardev's filename.
func (d *Device) Filename() string {
	if f := d.be.filename(); f != "" {
		return f
	}
	return string(d.kind)
}

// Busy reports whether a frontend (a monitor) uses the chardev.
func (d *Device) Busy() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.frontend
}

// Attach makes a monitor the chardev's frontend. For a socket it returns
// the listener the monitor serves, whose connections the chardev follows
// for query-chardev; for stdio it returns nil.
func (d *Device) Attach() (net.Listener, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.frontend {
		return nil, fmt.Errorf("chardev '%s' is already in use", d.label)
	}
	var l net.Listener
	switch b := d.be.(type) {
	case *socket:
		var err error
		if l, err = b.attach(); err != nil {
			return nil, err
		}
	case stdio:
	default:
		return nil, fmt.Errorf("a monitor cannot use a '%s' chardev", d.kind)
	}
	d.frontend = true
	return l, nil
}

func (d *Device) close() {
	d.be.close()
	if d.log != nil {
		d.log.Close()
	}
}

// Get returns the chardev labelled id, or nil.
func (r *Registry) Get(id string) *Device {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.devs[id]
}

// List returns the chardevs sorted by label (qsd lists them in hash-table
// order, which no client can rely on).
func (r *Registry) List() []*Device {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Device, 0, len(r.devs))
	for _, d := range r.devs {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b *Device) int {
		switch {
		case a.label < b.label:
			return -1
		case a.label > b.label:
			return 1
		}
		return 0
	})
	return out
}

// AddListener registers a server socket the daemon's command line made
// (--chardev socket,server=on). It serves nobody until a monitor attaches
// to it or Start runs.
func (r *Registry) AddListener(id string, l net.Listener) error {
	s, err := newServerSocket(l)
	if err != nil {
		return err
	}
	return r.insert(&Device{label: id, kind: "socket", be: s})
}

// AddStdio registers the daemon's stdin and stdout (--chardev stdio).
func (r *Registry) AddStdio(id string) error {
	if err := r.stdioFree(); err != nil {
		return err
	}
	return r.insert(&Device{label: id, kind: "stdio", be: stdio{}})
}

func (r *Registry) insert(d *Device) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.devs[d.label]; ok {
		return fmt.Errorf("Chardev with id '%s' already exists", d.label)
	}
	r.devs[d.label] = d
	return nil
}

// stdioFree refuses a second stdio chardev, as qsd does.
func (r *Registry) stdioFree() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.devs {
		if d.kind == "stdio" {
			return errors.New("cannot use stdio by multiple character devices")
		}
	}
	return nil
}

// Start serves the socket chardevs no monitor attached to: they accept
// one client at a time and drop what it sends, as qsd's chardevs without
// a frontend do.
func (r *Registry) Start() {
	for _, d := range r.List() {
		if s, ok := d.be.(*socket); ok && !d.Busy() {
			s.start(nil)
		}
	}
}

// Close closes every chardev (the daemon's shutdown).
func (r *Registry) Close() {
	r.mu.Lock()
	devs := r.devs
	r.devs = map[string]*Device{}
	r.mu.Unlock()
	for _, d := range devs {
		d.close()
	}
}

// open opens a chardev as chardev-add describes it: the logfile first,
// then the backend, as qsd does.
func (r *Registry) open(ctx context.Context, id string, b Backend, opener func(context.Context) (backend, error)) (*Device, error) {
	d := &Device{label: id, kind: b.Type}
	var err error
	if d.log, err = openLog(commonOf(b.Options)); err != nil {
		return nil, err
	}
	if d.be, err = opener(ctx); err != nil {
		if d.log != nil {
			d.log.Close()
		}
		return nil, err
	}
	return d, nil
}

// remove takes d out of the registry and closes it.
func (r *Registry) remove(d *Device) {
	r.mu.Lock()
	if r.devs[d.label] == d {
		delete(r.devs, d.label)
	}
	r.mu.Unlock()
	d.close()
}

// QOMType is a chardev type as qom-list-types and qom-list-properties
// report it.
type QOMType struct {
	Name, Parent string
	Abstract     bool
	Properties   []Property // its own, which follow its parent's
}

// Property is a QOM property: its name and type.
type Property struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// QOMTypes are the types of the chardevs blockd opens and their abstract
// parents, with qsd 7.2's names, parents and properties.
var QOMTypes = []QOMType{
	{Name: "chardev", Parent: "object", Abstract: true},
	{Name: "chardev-fd", Parent: "chardev", Abstract: true},
	{Name: "chardev-null", Parent: "chardev"},
	{Name: "chardev-ringbuf", Parent: "chardev"},
	{Name: "chardev-memory", Parent: "chardev-ringbuf"},
	{Name: "chardev-socket", Parent: "chardev", Properties: []Property{{"connected", "bool"}, {"addr", "SocketAddress"}}},
	{Name: "chardev-stdio", Parent: "chardev-fd"},
	{Name: "chardev-file", Parent: "chardev-fd"},
}

// Property reads one of the chardev's own QOM properties (qom-get).
func (d *Device) Property(name string) (any, bool) {
	s, ok := d.be.(*socket)
	if !ok {
		return nil, false
	}
	switch name {
	case "connected":
		return s.connected(), true
	case "addr":
		return s.addr, true
	}
	return nil, false
}
