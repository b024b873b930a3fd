package iotests

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// TestShutdownDuringJobs: quit and SIGTERM while a commit or a mirror
// runs (before READY, rate-limited, and in READY) while an NBD client
// reads: the daemon exits cleanly, the job is cancelled without changing
// the graph, every image passes qemu-img check and the device still
// reads the chain's data.
func TestShutdownDuringJobs(t *testing.T) {
	jobs := []struct {
		name  string
		cmd   string
		args  map[string]any
		ready bool // wait for BLOCK_JOB_READY rather than progress
	}{
		{"intermediate commit", "block-commit", map[string]any{"device": "top", "top-node": "mid", "base-node": "base", "speed": 2 << 20}, false},
		{"active commit", "block-commit", map[string]any{"device": "top", "base-node": "base", "speed": 2 << 20}, false},
		{"active commit ready", "block-commit", map[string]any{"device": "top", "base-node": "base"}, true},
		{"mirror", "blockdev-mirror", map[string]any{"device": "top", "target": "tgt", "sync": "full", "speed": 2 << 20}, false},
		{"mirror ready", "blockdev-mirror", map[string]any{"device": "top", "target": "tgt", "sync": "full"}, true},
	}
	for _, job := range jobs {
		for _, how := range []string{"quit", "SIGTERM"} {
			t.Run(job.name+"/"+how, func(t *testing.T) {
				d := start(t)
				mkChain(t, d.Dir)
				addChain(t, d, nil)
				run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("tgt.qcow2"), "64M")
				d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "tgt",
					"file": map[string]any{"driver": "file", "filename": d.Path("tgt.qcow2")}})
				sock := shortSock(t, "nbd")
				d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
				d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
				args := map[string]any{"job-id": "j"}
				for k, v := range job.args {
					args[k] = v
				}
				d.Cmd(job.cmd, args)
				if job.ready {
					d.WaitEvent("BLOCK_JOB_READY", 30*time.Second)
				} else {
					waitProgress(t, d, "j", 3<<20)
				}
				// A reader on the export while the daemon goes down.
				reader := make(chan struct{})
				go func() {
					defer close(reader)
					runErr("qemu-io", "-r", "-f", "raw", "-c", "read 0 64M", nbdURI(sock, "top"))
				}()
				shutdown(t, d, how)
				<-reader
				for _, img := range []string{"base", "mid", "top", "tgt"} {
					run(t, "qemu-img", "check", "-q", d.Path(img+".qcow2"))
				}
				run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
				if full, _ := headerBacking(t, d.Path("top.qcow2")); full != d.Path("mid.qcow2") {
					t.Errorf("a cancelled job changed top's header: %q", full)
				}
				if !isQSD() {
					if _, err := os.Stat(d.Path("qmp0.sock")); err == nil {
						t.Error("the monitor socket is left behind")
					}
				}
			})
		}
	}
}

// shutdown stops the daemon with quit or SIGTERM and waits for a clean
// exit.
func shutdown(t *testing.T, d *Daemon, how string) {
	t.Helper()
	if how == "quit" {
		d.Quit()
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}
