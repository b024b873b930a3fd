package block

import (
	"path/filepath"
	"strings"
)

// BackingFileName is what an overlay's image header should say when its
// COW backing becomes backing (nil: no backing): the path of the plain
// file that stores backing, and backing's format. Stream and commit write
// it with BackingFileChanger. Call it under the graph lock.
//
// The name is relative to the directory of the overlay's own image file
// when the overlay's header names its current backing with a relative
// name, so that a directory of images can still be moved as a whole; it
// is absolute otherwise. Either way it resolves, through ResolveBacking,
// to the same file the daemon has open.
//
// Only a backing stored in a plain file can be named: a json:
// pseudo-filename in a header is refused when the image is opened again
// (see AttachBacking), and a protocol name (nbd, null-co) would make a
// later open reach elsewhere than the daemon does now. Such a backing is
// refused with ErrNotSupported.
func BackingFileName(overlay, backing *Node) (name, format string, err error) {
	if backing == nil {
		return "", "", nil
	}
	b := SkipFilters(backing)
	path, ok := plainFile(b)
	if !ok {
		return "", "", Errorf(ErrNotSupported, "Cannot name node '%s' in the image header of '%s': it is not stored in a plain file", backing.Name(), overlay.Name())
	}
	format = b.Driver().Name
	if b.Driver().Kind == KindProtocol {
		// The backing is the file node itself. QEMU would write the
		// protocol's name ("file") as the format; blockd opens backing
		// files only with format drivers (AttachBacking), so it writes
		// "raw", which presents the same bytes.
		format = "raw"
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", "", Errorf(ErrInvalid, "Cannot name node '%s' in the image header of '%s': %s", backing.Name(), overlay.Name(), err)
	}
	if isRelativeName(overlay) {
		if own, ok := plainFile(SkipFilters(overlay)); ok {
			if dir, err := filepath.Abs(filepath.Dir(own)); err == nil {
				// A colon in the first component would make QEMU read the
				// relative name as a protocol prefix ("a:b/c"); absolute
				// names start with a slash and never do.
				if rel, err := filepath.Rel(dir, abs); err == nil && !strings.Contains(rel, ":") {
					return rel, format, nil
				}
			}
		}
		// An overlay that is not itself in a plain file has no directory
		// a relative name could be resolved against: name it absolutely.
	}
	return abs, format, nil
}

// plainFile returns the path of the "file" protocol node that stores n:
// n itself, or, for a format, its storage child with filters skipped.
// A format over another format, or over any other protocol, is not in a
// plain file.
func plainFile(n *Node) (string, bool) {
	if n == nil {
		return "", false
	}
	if n.Driver().Kind == KindFormat {
		c := StorageChild(n)
		if c == nil {
			return "", false
		}
		n = SkipFilters(c.Node())
	}
	if n.Driver().Name != "file" {
		return "", false
	}
	f, ok := n.Impl().(Filenamer)
	if !ok || f.Filename() == "" {
		return "", false
	}
	return f.Filename(), true
}

// isRelativeName reports whether the overlay's header names its current
// backing with a relative name.
func isRelativeName(overlay *Node) bool {
	bf, ok := SkipFilters(overlay).Impl().(BackingFiler)
	if !ok {
		return false
	}
	name, _ := bf.BackingFile()
	return name != "" && !filepath.IsAbs(name)
}
