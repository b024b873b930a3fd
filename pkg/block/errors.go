package block

import (
	"errors"
	"fmt"
	"syscall"
)

// Sentinels classify errors. Drivers wrap them with %w and add the facts
// only they know; callers test with errors.Is. The text a client reads is
// the wrapping error's message.
var (
	ErrNotFound = errors.New("not found")
	// ErrNoDevice: a command's device does not exist, where QEMU answers
	// with the DeviceNotFound class rather than GenericError.
	ErrNoDevice     = errors.New("device not found")
	ErrNotSupported = errors.New("operation not supported")
	ErrPermission   = errors.New("permission conflict")
	ErrFrozen       = errors.New("link is frozen")
	ErrReadOnly     = errors.New("block node is read-only")
	ErrNoSpace      = errors.New("no space left on device")
	ErrCorrupt      = errors.New("image is corrupt")
	ErrOutOfRange   = errors.New("request out of range")
	ErrBusy         = errors.New("node is busy")
	ErrInvalid      = errors.New("invalid argument")
	ErrInternal     = errors.New("internal error")
)

// userError carries a sentence for the client and a class sentinel.
type userError struct {
	msg   string
	class error
	cause error
}

func (e *userError) Error() string { return e.msg }
func (e *userError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.class, e.cause}
	}
	return []error{e.class}
}

// Errorf returns an error whose message is exactly the formatted text (the
// sentence a QMP client will read) and which matches class with errors.Is.
// A %w verb in format also keeps that cause reachable.
func Errorf(class error, format string, a ...any) error {
	err := fmt.Errorf(format, a...)
	return &userError{msg: err.Error(), class: class, cause: errors.Unwrap(err)}
}

// Strerror is the C library's sentence for the OS error in err ("No such
// file or directory"), which is how QEMU words its messages; an error
// without an errno gives its own text.
func Strerror(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	s := errno.Error()
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}
