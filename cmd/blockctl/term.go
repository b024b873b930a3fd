package main

import (
	"os"

	"golang.org/x/term"
)

// stdoutIsTerminal says whether stdout is a terminal, where progress is
// drawn as a bar; elsewhere (a pipe, a file, a CI log) it is printed as
// plain lines. A terminal that does not know its width (a pseudo-terminal
// nobody sized) gets lines too: the bar would have no room.
func stdoutIsTerminal() bool {
	fd := int(os.Stdout.Fd())
	if !term.IsTerminal(fd) {
		return false
	}
	w, _, err := term.GetSize(fd)
	return err == nil && w > 0
}
