package block

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// MaxBackingDepth bounds chains opened from image headers, so that a
// hostile chain cannot exhaust the daemon.
const MaxBackingDepth = 256

// ResolveBacking turns a backing file name from an image header into a
// path: relative names are relative to the directory of the image that
// names them, never to the daemon's working directory.
func ResolveBacking(image, backing string) string {
	if filepath.IsAbs(backing) || image == "" || strings.HasPrefix(image, "json:") {
		return backing
	}
	return filepath.Join(filepath.Dir(image), backing)
}

// HasProtocolPrefix reports whether QEMU would read a file name as
// "protocol:rest" rather than as a path: a colon comes before any slash.
// That takes in json: pseudo-filenames, "nbd://host/x", "nbd:host:port",
// "ssh:host" and "file:/x" alike; absolute paths never have one, and
// "dir/a:b" is a path.
func HasProtocolPrefix(name string) bool {
	i := strings.IndexByte(name, ':')
	return i >= 0 && !strings.Contains(name[:i], "/")
}

// AttachBacking opens the backing file an image header names and links it
// as the node's COW child, read-only, the way QEMU opens chains: format
// from the header (probed when empty), file protocol only.
//
// A name QEMU would read as a protocol or a json: pseudo-filename is
// refused: the header of an untrusted image must not make the daemon
// connect to a server or open a node the user never named (the
// CVE-2024-4467 class). qsd 7.2 still follows such backing names from
// headers; a user who wants that chain names the backing in blockdev-add.
func (o *Opener) AttachBacking(ctx context.Context, backing, format string) (*Child, error) {
	image := o.node.Filename()
	if HasProtocolPrefix(backing) {
		return nil, Errorf(ErrInvalid, "Could not open backing file of '%s': backing file name '%s' is not a plain file name", image, backing)
	}
	path := ResolveBacking(image, backing)
	depth := 0
	for p := o; p != nil; p = p.parent {
		if filepath.Clean(p.node.Filename()) == filepath.Clean(path) {
			return nil, Errorf(ErrInvalid, "Could not open backing file of '%s': backing file loop: '%s' is already in the chain", image, path)
		}
		depth++
	}
	if depth > MaxBackingDepth {
		return nil, Errorf(ErrInvalid, "Could not open backing file of '%s': the backing chain is deeper than %d images", image, MaxBackingDepth)
	}
	if format == "" {
		var err error
		if format, err = probe(path); err != nil {
			return nil, Errorf(ErrNotFound, "Could not open backing file: Could not open '%s': %s", path, err)
		}
	}
	if d := LookupDriver(format); d == nil || d.Kind != KindFormat {
		return nil, Errorf(ErrInvalid, "Could not open backing file: Unknown driver '%s'", format)
	}
	opts := map[string]any{
		"driver":    format,
		"read-only": true,
		"file":      map[string]any{"driver": "file", "filename": path},
	}
	if o.common.Cache != nil {
		opts["cache"] = o.common.Cache
	}
	if fs := o.common.ForceShare; fs != nil && *fs {
		opts["force-share"] = true
	}
	raw, err := marshalJSON(opts)
	if err != nil {
		return nil, err
	}
	c, err := o.attach(ctx, "backing", NodeRef{Inline: raw}, RoleCOW, nil, nil)
	if err != nil {
		return nil, Errorf(ErrInvalid, "Could not open backing file: %s", err)
	}
	return c, nil
}

// probe guesses the format of an image file from its first bytes.
func probe(path string) (string, error) {
	// Non-blocking, so that a FIFO named by a hostile header cannot hang
	// the open; what is no regular file or device is left to the file
	// driver to refuse.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("%s", Strerror(err))
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Mode()&(os.ModeNamedPipe|os.ModeSocket) != 0 {
		return "raw", nil
	}
	head := make([]byte, 2048)
	n, _ := f.Read(head)
	best, score := "raw", 0
	for _, d := range Drivers() {
		if d.Probe == nil {
			continue
		}
		if s := d.Probe(head[:n]); s > score {
			best, score = d.Name, s
		}
	}
	return best, nil
}

// ProbeFormat guesses the format of an image file from its first bytes,
// as opening a backing file without a format does.
func ProbeFormat(path string) (string, error) { return probe(path) }
