package file

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
)

// CreateOptions are BlockdevCreateOptionsFile's members.
type CreateOptions struct {
	Filename       string        `json:"filename"`
	Size           uint64        `json:"size"`
	Preallocation  Preallocation `json:"preallocation,omitempty"`
	NoCOW          *bool         `json:"nocow,omitempty"`
	ExtentSizeHint *uint64       `json:"extent-size-hint,omitempty"`
}

// Preallocation is PreallocMode.
type Preallocation string

// EnumValues implements qmp.Enum.
func (Preallocation) EnumValues() []string { return []string{"off", "metadata", "falloc", "full"} }

// create makes (or empties) a file of opts.Size bytes. It refuses a file
// that another user has open for writing, by the image locks.
func create(ctx context.Context, g *block.Graph, opts *CreateOptions) error {
	if opts.Size > 1<<62 {
		return fmt.Errorf("Image size is too large")
	}
	f, err := os.OpenFile(opts.Filename, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("Could not create '%s': %s", opts.Filename, block.Strerror(err))
	}
	defer f.Close()
	fd := int(f.Fd())
	if err := checkLocks(fd, block.PermWrite|block.PermResize, block.PermConsistentRead|block.PermWriteUnchanged); err != nil {
		return err
	}
	if err := applyLocks(fd, block.PermWrite|block.PermResize, block.PermConsistentRead|block.PermWriteUnchanged); err != nil {
		return fmt.Errorf("Could not lock '%s': %s", opts.Filename, block.Strerror(err))
	}
	if err := unix.Ftruncate(fd, 0); err != nil {
		return fmt.Errorf("Could not resize file: %s", block.Strerror(err))
	}
	size := int64(opts.Size)
	switch opts.Preallocation {
	case "", "off":
		err = unix.Ftruncate(fd, size)
	case "falloc":
		err = unix.Fallocate(fd, 0, 0, size)
	case "full":
		err = writeZeroes(f, size)
	default:
		return fmt.Errorf("Unsupported preallocation mode '%s'", opts.Preallocation)
	}
	if err != nil {
		return fmt.Errorf("Could not preallocate data for the new file: %s", block.Strerror(err))
	}
	return f.Sync()
}

func writeZeroes(f *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	return nil
}
