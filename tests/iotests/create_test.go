package iotests

import (
	"encoding/json"
	"os"
	"testing"
	"time"
)

type jobInfo struct {
	ID              string `json:"id"`
	Type            string `json:"type"`
	Status          string `json:"status"`
	CurrentProgress int64  `json:"current-progress"`
	TotalProgress   int64  `json:"total-progress"`
	Error           string `json:"error"`
}

// waitConcluded waits for job id's "concluded" status change.
func waitConcluded(t *testing.T, d *Daemon, id string) {
	t.Helper()
	waitStatus(t, d, id, "concluded")
}

// waitStatus waits until job id's last status change is to status.
func waitStatus(t *testing.T, d *Daemon, id, status string) {
	t.Helper()
	if !d.WaitHistory(func(ev []Event) bool {
		s := statuses(ev, id)
		return len(s) > 0 && s[len(s)-1] == status
	}, 30*time.Second) {
		t.Fatalf("job %s did not reach %s: %v", id, status, statuses(d.History(), id))
	}
}

func queryJobs(d *Daemon) map[string]jobInfo {
	var list []jobInfo
	d.CmdInto("query-jobs", nil, &list)
	m := map[string]jobInfo{}
	for _, j := range list {
		m[j.ID] = j
	}
	return m
}

// statuses collects the JOB_STATUS_CHANGE sequence of a job from events.
func statuses(ev []Event, id string) []string {
	var s []string
	for _, e := range ev {
		if e.Event == "JOB_STATUS_CHANGE" && e.Data["id"] == id {
			s = append(s, e.Data["status"].(string))
		}
	}
	return s
}

// TestBlockdevCreateFile runs a file create job through its whole life:
// created and running before the reply, then waiting, pending, concluded;
// it stays until job-dismiss; only query-jobs sees it.
func TestBlockdevCreateFile(t *testing.T) {
	d := start(t)
	d.ClearHistory()
	d.Cmd("blockdev-create", map[string]any{"job-id": "c1", "options": map[string]any{"driver": "file", "filename": d.Path("new.img"), "size": 1 << 20}})
	waitConcluded(t, d, "c1")
	if st, err := os.Stat(d.Path("new.img")); err != nil || st.Size() != 1<<20 {
		t.Fatalf("created file: %v %v", st, err)
	}
	j := queryJobs(d)["c1"]
	if j.Type != "create" || j.Status != "concluded" || j.CurrentProgress != 1 || j.TotalProgress != 1 || j.Error != "" {
		t.Errorf("query-jobs entry %+v", j)
	}
	if got := string(d.Cmd("query-block-jobs", nil)); got != "[]" {
		t.Errorf("query-block-jobs shows a create job: %s", got)
	}
	d.MustFail("block-job-dismiss", map[string]any{"id": "c1"}, "DeviceNotActive", "Block job 'c1' not found")
	d.MustFail("blockdev-create", map[string]any{"job-id": "c1", "options": map[string]any{"driver": "file", "filename": d.Path("x.img"), "size": 0}}, "GenericError", "Job ID 'c1' already in use")
	d.Cmd("job-dismiss", map[string]any{"id": "c1"})
	waitStatus(t, d, "c1", "null")
	ev := d.History()
	got, _ := json.Marshal(statuses(ev, "c1"))
	if string(got) != `["created","running","waiting","pending","concluded","null"]` {
		t.Errorf("status changes %s", got)
	}
	d.MustFail("job-dismiss", map[string]any{"id": "c1"}, "GenericError", "Job not found")

	// Synchronous errors: no job is created.
	d.MustFail("blockdev-create", map[string]any{"job-id": "r", "options": map[string]any{"driver": "raw"}}, "GenericError", "Driver does not support blockdev-create")
	d.MustFail("blockdev-create", map[string]any{"options": map[string]any{"driver": "file", "filename": d.Path("x.img"), "size": 1024}}, "GenericError", "Parameter 'job-id' is missing")
	d.MustFail("blockdev-create", map[string]any{"job-id": "#x", "options": map[string]any{"driver": "file", "filename": d.Path("x.img"), "size": 0}}, "GenericError", "Invalid job ID '#x'")
	if jobs := queryJobs(d); len(jobs) != 0 {
		t.Errorf("jobs after failed creates: %v", jobs)
	}

	// A run-time failure still returns {} and shows in query-jobs.
	d.Cmd("blockdev-create", map[string]any{"job-id": "bad", "options": map[string]any{"driver": "file", "filename": "/nonexistent/dir/x.img", "size": 0}})
	waitConcluded(t, d, "bad")
	if j := queryJobs(d)["bad"]; j.Status != "concluded" || j.Error == "" || j.CurrentProgress != 1 || j.TotalProgress != 1 {
		t.Errorf("failed create job: %+v", j)
	}
	// A second job: query-jobs lists the newest first.
	d.Cmd("blockdev-create", map[string]any{"job-id": "c2", "options": map[string]any{"driver": "file", "filename": d.Path("c2.img"), "size": 0}})
	waitConcluded(t, d, "c2")
	var list []jobInfo
	d.CmdInto("query-jobs", nil, &list)
	if len(list) != 2 || list[0].ID != "c2" || list[1].ID != "bad" {
		t.Errorf("query-jobs order: %+v", list)
	}
	d.Cmd("job-dismiss", map[string]any{"id": "c2"})
	ev = d.History()
	got, _ = json.Marshal(statuses(ev, "bad"))
	if string(got) != `["created","running","aborting","concluded"]` {
		t.Errorf("status changes of a failed create %s", got)
	}
	d.Cmd("job-dismiss", map[string]any{"id": "bad"})
}
