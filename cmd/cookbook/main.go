// Command cookbook writes docs/cookbook.md from the flows TestCookbook
// runs (tests/iotests/testdata/cookbook): the intro, then every flow's
// prose, QMP exchange, shell and blockctl commands and graphs.
//
//	cookbook -o docs/cookbook.md      (make docs)
//	cookbook -check docs/cookbook.md  (make lint; also a unit test)
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/blockd/blockd/internal/cookbook"
)

// flowDir is where the flows are, from the top of the repository.
const flowDir = "tests/iotests/testdata/cookbook"

func main() {
	dir := flag.String("flows", flowDir, "the directory of the flows")
	out := flag.String("o", "", "write the cookbook to this file")
	check := flag.String("check", "", "fail if this file differs from the cookbook")
	flag.Parse()
	if err := run(*dir, *out, *check); err != nil {
		fmt.Fprintln(os.Stderr, "cookbook:", err)
		os.Exit(1)
	}
}

func run(dir, out, check string) error {
	doc, err := render(dir)
	if err != nil {
		return err
	}
	switch {
	case out != "":
		return os.WriteFile(out, doc, 0o644)
	case check != "":
		old, err := os.ReadFile(check)
		if err != nil {
			return err
		}
		if !bytes.Equal(old, doc) {
			return fmt.Errorf("%s is out of date: run 'make docs' and commit it", check)
		}
		return nil
	}
	_, err = os.Stdout.Write(doc)
	return err
}

func render(dir string) ([]byte, error) {
	flows, err := cookbook.Load(dir)
	if err != nil {
		return nil, err
	}
	intro, err := os.ReadFile(filepath.Join(dir, "intro.md"))
	if err != nil {
		return nil, err
	}
	return cookbook.Render(string(intro), flows, dir)
}
