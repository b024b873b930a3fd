package qmp

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// TestGoQemuClient: digitalocean/go-qemu's client connects, runs commands
// and receives events. It sends commands without a newline and reads
// replies with a line scanner.
func TestGoQemuClient(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	mon, err := goqmp.NewSocketMonitor("unix", e.paths[0], 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	if mon.Version.String() != "7.2.22" || len(mon.Capabilities) != 1 || mon.Capabilities[0] != "oob" {
		t.Errorf("greeting: %v %v", mon.Version, mon.Capabilities)
	}
	events, err := mon.Events(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan goqmp.Event, 16)
	go func() {
		for ev := range events {
			got <- ev
		}
		close(got)
	}()

	out, err := mon.Run([]byte(`{"execute": "query-version"}`))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Return struct {
			QEMU    struct{ Major, Minor, Micro int } `json:"qemu"`
			Package string                            `json:"package"`
		} `json:"return"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.Return.QEMU.Major != 7 || r.Return.QEMU.Micro != 22 {
		t.Errorf("query-version: %s %v", out, err)
	}

	// Events emitted by the command come before its reply.
	out, err = mon.Run([]byte(`{"execute": "blockdev-create", "arguments": {"job-id": "j", "options": {}}}`))
	if err != nil || string(out) != `{"return": {}}` {
		t.Errorf("blockdev-create: %s %v", out, err)
	}
	for _, want := range []string{"created", "running"} {
		select {
		case ev := <-got:
			if ev.Event != "JOB_STATUS_CHANGE" || ev.Data["status"] != want || ev.Data["id"] != "j" {
				t.Errorf("event %+v, want %s", ev, want)
			}
		case <-time.After(waitFor):
			t.Fatalf("no %s event", want)
		}
	}

	if _, err := mon.Run([]byte(`{"execute": "block-job-set-speed", "arguments": {"device": "nojob", "speed": 1}}`)); err == nil ||
		err.Error() != "Block job 'nojob' not found" {
		t.Errorf("error: %v", err)
	}
}
