package chardev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"unicode"
	"unicode/utf8"
)

// Backends are the kinds blockd opens, in the order qsd's
// query-chardev-backends lists them.
var Backends = []Kind{"null", "ringbuf", "stdio", "socket", "file", "memory"}

// opener opens a backend whose options were checked already.
type opener func(ctx context.Context) (backend, error)

// plan checks b's options and returns how to open it. Every check that
// needs no resource happens here, so that chardev-change can refuse bad
// options before it closes the chardev it replaces.
func (r *Registry) plan(b Backend) (opener, error) {
	switch o := b.Options.(type) {
	case *RingbufOptions:
		rb, err := newRingbuf(o.Size)
		if err != nil {
			return nil, err
		}
		return func(context.Context) (backend, error) { return rb, nil }, nil
	case *SocketOptions:
		return planSocket(o)
	case *FileOptions:
		return func(context.Context) (backend, error) { return openFile(o) }, nil
	case *StdioOptions:
		if err := r.stdioFree(); err != nil {
			return nil, err
		}
		return func(context.Context) (backend, error) { return stdio{}, nil }, nil
	}
	if b.Type == "null" {
		return func(context.Context) (backend, error) { return null{}, nil }, nil
	}
	// compat(qsd-7.2): how qsd refuses a backend it was built without.
	return nil, fmt.Errorf("'%s' is not a valid char driver name", b.Type)
}

// commonOf returns the members every variant shares.
func commonOf(opts any) Common {
	if o, ok := opts.(interface{ common() Common }); ok {
		return o.common()
	}
	return Common{}
}

func (c *Common) common() Common { return *c }

// null drops what is written and never has anything to read.
type null struct{}

func (null) filename() string { return "" }
func (null) close() error     { return nil }

// stdio is the daemon's stdin and stdout; a monitor does the I/O.
type stdio struct{}

func (stdio) filename() string { return "" }
func (stdio) close() error     { return nil }

// file is the file backend: output to out, input from in. Nothing writes
// to it without a frontend, but the files are opened (and out created)
// as qsd does.
type file struct{ in, out *os.File }

func openFile(o *FileOptions) (backend, error) {
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if o.Append != nil && *o.Append {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	out, err := os.OpenFile(o.Out, flags, 0o666)
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %s", o.Out, strerror(err))
	}
	f := &file{out: out}
	if o.In != nil {
		if f.in, err = os.Open(*o.In); err != nil {
			out.Close()
			return nil, fmt.Errorf("Could not open '%s': %s", *o.In, strerror(err))
		}
	}
	return f, nil
}

func (*file) filename() string { return "" }

func (f *file) close() error {
	if f.in != nil {
		f.in.Close()
	}
	return f.out.Close()
}

// openLog opens the logfile a chardev records its output in.
func openLog(c Common) (*os.File, error) {
	if c.Logfile == nil {
		return nil, nil
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if c.Logappend != nil && *c.Logappend {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	f, err := os.OpenFile(*c.Logfile, flags, 0o666)
	if err != nil {
		return nil, fmt.Errorf("Could not create '%s': %s", *c.Logfile, strerror(err))
	}
	return f, nil
}

// strerror words an OS error as the C library does ("No such file or
// directory"), as QEMU's messages quote it.
func strerror(err error) string {
	msg := err.Error()
	var errno syscall.Errno
	if errors.As(err, &errno) {
		msg = errno.Error()
	}
	r, n := utf8.DecodeRuneInString(msg)
	return string(unicode.ToUpper(r)) + msg[n:]
}
