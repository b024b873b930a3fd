package soak

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The NBD writer writes nbdSlotsPerRun slots of nbdSlot bytes per qemu-io
// run, the next slots of the disk each time, then flushes; a run starts
// at most every nbdPeriod, so that both daemons get the same I/O to do
// whatever their speed (a qemu-io run also costs the shared machine
// about as much CPU as the daemon's side of it).
const (
	nbdSlot        = 64 << 10
	nbdSlotsPerRun = 4
	nbdSlots       = diskSize / nbdSlot
	nbdPeriod      = 100 * time.Millisecond
)

// nbdWriter writes patterns into the exported disk through NBD, one
// qemu-io run after another, each run's writes followed by a flush: a run
// that exits 0 saw its writes flushed, and they must read back.
type nbdWriter struct {
	uri     string
	written map[int]byte // slot -> the pattern last seen flushed there
	runs    int          // qemu-io runs that succeeded
}

func newNBDWriter(sock string) *nbdWriter {
	return &nbdWriter{uri: "nbd+unix:///disk?socket=" + sock, written: map[int]byte{}}
}

// loop runs qemu-io until ctx ends, each run as one step of g (a sample
// sees no NBD connection).
func (w *nbdWriter) loop(ctx context.Context, g *gate) error {
	return pace(ctx, g, nbdPeriod, w.write)
}

func (w *nbdWriter) write() error {
	first := (w.runs * nbdSlotsPerRun) % nbdSlots
	p := byte(w.runs%250 + 1)
	args := []string{"-f", "raw"}
	for s := first; s < first+nbdSlotsPerRun; s++ {
		args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", p, s*nbdSlot, nbdSlot))
	}
	args = append(args, "-c", "flush", w.uri)
	ctx, cancel := context.WithTimeout(context.Background(), replyTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "qemu-io", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("NBD writer: qemu-io %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for s := first; s < first+nbdSlotsPerRun; s++ {
		w.written[s] = p
	}
	w.runs++
	return nil
}

// verify reads every slot back from the disk image once the daemon has
// exited: the last pattern flushed there, or zeroes.
func (w *nbdWriter) verify(t *testing.T, image string) {
	run(t, "qemu-img", "check", "-q", image)
	var reads []string
	for s := range nbdSlots {
		reads = append(reads, fmt.Sprintf("read -P %d %d %d", w.written[s], s*nbdSlot, nbdSlot))
	}
	readPatterns(t, image, "qcow2", reads)
}

// readPatterns runs qemu-io's read -P commands on an image: QEMU's block
// layer is the judge of what the daemon wrote.
func readPatterns(t *testing.T, image, format string, reads []string) {
	t.Helper()
	args := []string{"-r", "-f", format}
	for _, r := range reads {
		args = append(args, "-c", r)
	}
	out, err := exec.Command("qemu-io", append(args, image)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Errorf("reading %s back: %v\n%s", image, err, out)
	}
}
