package qmp

import (
	"errors"
	"fmt"
)

// Class is a QMP error class. The set is closed and most errors are
// GenericError; a client branches on the class, a person reads the desc.
type Class string

// The error classes of QEMU 7.2. qsd uses only the first four.
const (
	GenericError    Class = "GenericError"
	CommandNotFound Class = "CommandNotFound"
	DeviceNotFound  Class = "DeviceNotFound"
	DeviceNotActive Class = "DeviceNotActive"
	KVMMissingCap   Class = "KVMMissingCap"
)

// Error is an error as a QMP client sees it: the class and the sentence
// ("desc") go on the wire. Err is the cause, for the log; it is never sent.
type Error struct {
	Class Class
	Desc  string
	Err   error
}

// Error returns Desc, the text the client reads.
func (e *Error) Error() string { return e.Desc }

// Unwrap returns the cause, so errors.Is and errors.As see through an Error.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns a GenericError whose desc is the formatted message. A %w
// verb keeps the wrapped error as the cause (Err) as well.
func Errorf(format string, a ...any) *Error {
	return Classf(GenericError, format, a...)
}

// Classf is Errorf with another class.
func Classf(class Class, format string, a ...any) *Error {
	err := fmt.Errorf(format, a...)
	e := &Error{Class: class, Desc: err.Error()}
	switch err.(type) {
	case interface{ Unwrap() error }, interface{ Unwrap() []error }:
		e.Err = err
	}
	return e
}

// normErr turns a nil *Error stored in an error interface into nil: a
// helper declared to return *Error whose nil result is returned as error
// means success.
func normErr(err error) error {
	if e, ok := err.(*Error); ok && e == nil {
		return nil
	}
	return err
}

// asError converts any error to the class and desc sent to the client: an
// *Error found in the chain keeps its class and desc, anything else is a
// GenericError with err.Error() as its desc.
func asError(err error) *Error {
	var qe *Error
	if errors.As(err, &qe) {
		if qe == nil {
			return &Error{Class: GenericError, Desc: "Internal error", Err: errors.New("qmp: nil *Error in an error chain")}
		}
		if qe.Class == "" {
			return &Error{Class: GenericError, Desc: qe.Desc, Err: qe.Err}
		}
		return qe
	}
	return &Error{Class: GenericError, Desc: err.Error(), Err: err}
}

// Messages of the argument checks, worded as QEMU 7.2 words them.
// compat(qsd-7.2): qmp-protocol.md section 6, transcript P-1.

func errMissing(name string) *Error {
	return Errorf("Parameter '%s' is missing", name)
}

func errUnexpected(name string) *Error {
	return Errorf("Parameter '%s' is unexpected", name)
}

func errType(name, expected string) *Error {
	return Errorf("Invalid parameter type for '%s', expected: %s", name, expected)
}

// errValue is QEMU's "Parameter '%s' expects %s" (uint64 values, integer
// ranges).
func errValue(name, expected string) *Error {
	return Errorf("Parameter '%s' expects %s", name, expected)
}

func errEnum(name, val string) *Error {
	return Errorf("Parameter '%s' does not accept value '%s'", name, val)
}
