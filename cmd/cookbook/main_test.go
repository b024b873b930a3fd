package main

import (
	"path/filepath"
	"testing"
)

// TestCookbookCurrent fails when docs/cookbook.md is not what the flows
// render to: someone edited a flow (or the document) without 'make docs'.
func TestCookbookCurrent(t *testing.T) {
	root := filepath.Join("..", "..")
	if err := run(filepath.Join(root, flowDir), "", filepath.Join(root, "docs", "cookbook.md")); err != nil {
		t.Fatal(err)
	}
}
