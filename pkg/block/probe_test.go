package block_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
)

// TestProbeFIFO: probing a FIFO (a hostile header can name one) returns
// at once instead of blocking until a writer comes.
func TestProbeFIFO(t *testing.T) {
	fifo := t.TempDir() + "/fifo"
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	go func() {
		f, _ := block.ProbeFormat(fifo)
		done <- f
	}()
	select {
	case f := <-done:
		if f != "raw" {
			t.Errorf("probe of a FIFO: %q, want raw (left to the file driver to refuse)", f)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("probing a FIFO blocks")
	}
}
