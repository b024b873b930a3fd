// Command qmpdoc writes docs/qmp-reference.md, the reference of blockd's
// QMP commands, events and types, from the schema query-qmp-schema
// announces. It builds the schema in-process: no daemon runs.
//
//	qmpdoc -o docs/qmp-reference.md      (make docs)
//	qmpdoc -check docs/qmp-reference.md  (make lint; also a unit test)
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/blockd/blockd/pkg/blockdev"
	"github.com/blockd/blockd/pkg/qmp"

	// The drivers blockd registers (cmd/blockd imports the same).
	_ "github.com/blockd/blockd/pkg/filters"
	_ "github.com/blockd/blockd/pkg/formats/file"
	_ "github.com/blockd/blockd/pkg/formats/nbd"
	_ "github.com/blockd/blockd/pkg/formats/nullco"
	_ "github.com/blockd/blockd/pkg/formats/qcow2"
	_ "github.com/blockd/blockd/pkg/formats/raw"
	_ "github.com/blockd/blockd/pkg/formats/rbd"
	_ "github.com/blockd/blockd/pkg/formats/snapshotaccess"
)

func main() {
	out := flag.String("o", "", "write the reference to this file")
	check := flag.String("check", "", "fail if this file differs from the reference")
	flag.Parse()
	if err := run(*out, *check); err != nil {
		fmt.Fprintln(os.Stderr, "qmpdoc:", err)
		os.Exit(1)
	}
}

func run(out, check string) error {
	doc, err := reference()
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

// reference renders the schema of a QMP server with blockd's commands.
func reference() ([]byte, error) {
	q := qmp.NewServer(qmp.ServerOptions{})
	defer q.Close()
	blockdev.New(nil).Register(q)
	sc, problems := q.Schema(false)
	if len(problems) > 0 {
		return nil, fmt.Errorf("the schema is incomplete: %v", problems)
	}
	return render(sc), nil
}
