package main

import (
	"os"

	"golang.org/x/term"
)

// stdoutIsTerminal says whether stdout is a terminal, where progress is
// drawn as a bar; elsewhere (a pipe, a file, a CI log) it is printed as
// plain lines.
func stdoutIsTerminal() bool { return term.IsTerminal(int(os.Stdout.Fd())) }
