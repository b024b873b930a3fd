package main

import "testing"

// TestReferenceUpToDate fails when a command, event or type changed and
// docs/qmp-reference.md was not regenerated.
func TestReferenceUpToDate(t *testing.T) {
	if err := run("", "../../docs/qmp-reference.md"); err != nil {
		t.Fatal(err)
	}
}
