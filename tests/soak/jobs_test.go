package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// jobTimeout bounds one job from its command to its concluded state:
// the layers are 8 MiB, so this is a hang, not a slow machine.
const jobTimeout = 60 * time.Second

// jobDriver repeats the block jobs on a chain of its own, two layers
// deep between cycles: base ◀ top (at first base holds 0x11 in [0, 2M)
// and top 0x22 in [1M, 3M); after a cycle top holds it all). Each cycle
// ends with the same shape on new images and the chain reading the
// same; stream, commit and mirror copy the chain's 3 MiB of data every
// cycle (active commit has nothing to copy: its top is a new, empty
// overlay):
//
//	create o over top; stream o down to base   base ◀ o       (top deleted)
//	create p over o; commit o into base        base ◀ p       (o deleted)
//	active commit p into base, job-complete    base           (p deleted)
//	create base', top' over base'; mirror base to top' (full), job-complete
//	                                           base' ◀ top'   (base deleted)
//
// Every layer is made by two blockdev-create jobs (the file, then the
// qcow2 image); every job is dismissed by hand once concluded.
type jobDriver struct {
	m         *monitor
	dir       string
	guard     *guard
	base, top string // node names; the files are dir/<name>.qcow2
	cycles    int    // cycles done, read once the driver has stopped
	jobs      int    // jobs concluded and dismissed
}

// newJobDriver makes the first chain with qemu-img and qemu-io and adds
// it to the daemon.
func newJobDriver(t *testing.T, m *monitor, dir string, g *guard) (*jobDriver, error) {
	j := &jobDriver{m: m, dir: dir, guard: g, base: "b0", top: "t0"}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", j.file("b0"), strconv.Itoa(chainSize))
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", j.file("b0"), "-F", "qcow2", j.file("t0"), strconv.Itoa(chainSize))
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 2M", j.file("b0"))
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 1M 2M", j.file("t0"))
	for _, n := range []struct{ node, backing string }{{"b0", ""}, {"t0", "b0"}} {
		if err := j.addFile(n.node); err != nil {
			return nil, err
		}
		if err := j.addImage(n.node, n.backing); err != nil {
			return nil, err
		}
	}
	return j, nil
}

func (j *jobDriver) file(node string) string { return filepath.Join(j.dir, node+".qcow2") }

// jobPeriod paces the cycles: one starts at most every jobPeriod, so that
// both daemons do the same job work (qsd takes about 2 s a cycle under
// this load, blockd about half a second).
const jobPeriod = 3 * time.Second

// loop runs cycles until ctx ends, each one as one step of g (so that a
// sample sees the chain between cycles, with no job in it).
func (j *jobDriver) loop(ctx context.Context, g *gate) error {
	return pace(ctx, g, jobPeriod, func() error {
		if err := j.cycle(j.cycles + 1); err != nil {
			return fmt.Errorf("job cycle %d: %w", j.cycles+1, err)
		}
		return nil
	})
}

func (j *jobDriver) cycle(k int) error {
	o, p := fmt.Sprintf("o%d", k), fmt.Sprintf("p%d", k)
	base2, top2 := fmt.Sprintf("b%d", k), fmt.Sprintf("t%d", k)
	steps := []func() error{
		func() error { return j.layer(o, j.top) },
		func() error {
			return j.job(fmt.Sprintf("s%d", k), "block-stream", map[string]any{"device": o, "base-node": j.base}, false)
		},
		func() error { return j.drop(j.top) },
		func() error { return j.layer(p, o) },
		func() error {
			return j.job(fmt.Sprintf("c%d", k), "block-commit", map[string]any{"device": p, "top-node": o, "base-node": j.base}, false)
		},
		func() error { return j.drop(o) },
		func() error {
			return j.job(fmt.Sprintf("a%d", k), "block-commit", map[string]any{"device": p, "base-node": j.base}, true)
		},
		func() error { return j.drop(p) },
		func() error { return j.layer(base2, "") },
		func() error { return j.layer(top2, base2) },
		func() error {
			return j.job(fmt.Sprintf("m%d", k), "blockdev-mirror", map[string]any{"device": j.base, "target": top2, "sync": "full"}, true)
		},
		func() error { return j.drop(j.base) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	j.base, j.top = base2, top2
	j.cycles++
	return nil
}

// layer creates node's image with two blockdev-create jobs (the file,
// then qcow2 over it, with backing's file in its header when backing is
// not "") and adds it over backing.
func (j *jobDriver) layer(node, backing string) error {
	if err := j.job("cf"+node, "blockdev-create", map[string]any{"options": map[string]any{
		"driver": "file", "filename": j.file(node), "size": 0}}, false); err != nil {
		return err
	}
	if err := j.addFile(node); err != nil {
		return err
	}
	opts := map[string]any{"driver": "qcow2", "file": node + "f", "size": chainSize}
	if backing != "" {
		opts["backing-file"] = j.file(backing)
		opts["backing-fmt"] = "qcow2"
	}
	if err := j.job("cq"+node, "blockdev-create", map[string]any{"options": opts}, false); err != nil {
		return err
	}
	return j.addImage(node, backing)
}

// addFile adds the file node of node's image, node+"f"; drop deletes it.
func (j *jobDriver) addFile(node string) error {
	_, err := j.m.cmd("blockdev-add", map[string]any{"driver": "file", "node-name": node + "f", "filename": j.file(node)})
	return err
}

// addImage adds node's qcow2 image over its file node and over the node
// backing ("": none).
func (j *jobDriver) addImage(node, backing string) error {
	args := map[string]any{"driver": "qcow2", "node-name": node, "file": node + "f"}
	if backing != "" {
		args["backing"] = backing
	}
	_, err := j.m.cmd("blockdev-add", args)
	return err
}

// drop deletes node, its file node and its image.
func (j *jobDriver) drop(node string) error {
	for _, n := range []string{node, node + "f"} {
		if _, err := j.m.cmd("blockdev-del", map[string]any{"node-name": n}); err != nil {
			return err
		}
	}
	return os.Remove(j.file(node))
}

// job runs a job from its command to its dismissal, apart from the
// clients' queries (see guard).
func (j *jobDriver) job(id, command string, args map[string]any, complete bool) error {
	return j.guard.exclusive(func() error { return j.runJob(id, command, args, complete) })
}

// runJob starts a job (auto-dismiss off for block jobs; blockdev-create
// jobs are dismissed by hand anyway), completes it at READY when
// complete is set, waits for it to conclude, checks that query-jobs
// shows no error for it and dismisses it.
func (j *jobDriver) runJob(id, command string, args map[string]any, complete bool) error {
	args["job-id"] = id
	if command != "blockdev-create" {
		args["auto-dismiss"] = false
	}
	if _, err := j.m.cmd(command, args); err != nil {
		return err
	}
	if complete {
		if err := j.waitStatus(id, "ready"); err != nil {
			return err
		}
		if _, err := j.m.cmd("job-complete", map[string]any{"id": id}); err != nil {
			return err
		}
	}
	if err := j.waitStatus(id, "concluded"); err != nil {
		return err
	}
	out, err := j.m.cmd("query-jobs", nil)
	if err != nil {
		return err
	}
	var list []struct {
		ID    string `json:"id"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return err
	}
	for _, info := range list {
		if info.ID == id && info.Error != "" {
			return fmt.Errorf("job %s (%s) failed: %s", id, command, info.Error)
		}
	}
	if _, err := j.m.cmd("job-dismiss", map[string]any{"id": id}); err != nil {
		return err
	}
	j.jobs++
	return nil
}

// waitStatus waits for job id's JOB_STATUS_CHANGE to status.
func (j *jobDriver) waitStatus(id, status string) error {
	timeout := time.After(jobTimeout)
	for {
		select {
		case e, ok := <-j.m.events:
			if !ok {
				return fmt.Errorf("job %s: connection closed waiting for %s", id, status)
			}
			if e.Event != "JOB_STATUS_CHANGE" || e.Data["id"] != id {
				continue
			}
			switch e.Data["status"] {
			case status:
				return nil
			case "concluded", "aborting":
				return fmt.Errorf("job %s ended (%s) before %s", id, e.Data["status"], status)
			}
		case <-timeout:
			return fmt.Errorf("job %s: not %s within %v", id, status, jobTimeout)
		}
	}
}

// verify checks the chain the driver left: both images clean, and the
// data every cycle carried through the jobs reads back through QEMU's
// block layer.
func (j *jobDriver) verify(t *testing.T) {
	for _, n := range []string{j.base, j.top} {
		run(t, "qemu-img", "check", "-q", j.file(n))
	}
	readPatterns(t, j.file(j.top), "qcow2", []string{"read -P 0x11 0 1M", "read -P 0x22 1M 2M", "read -P 0 3M 5M"})
}
