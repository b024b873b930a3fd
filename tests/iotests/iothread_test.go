package iotests

import "testing"

// TestSetIOThread: x-blockdev-set-iothread's checks, as qsd 7.2 makes
// them: the node must exist, a node an export uses needs force (its
// children do not), the iothread must exist or be null.
func TestSetIOThread(t *testing.T) {
	d := start(t)
	sock := shortSock(t, "nbd")
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0"})
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r0", "file": "n0"})
	d.Cmd("object-add", map[string]any{"qom-type": "iothread", "id": "io0"})
	set := func(args map[string]any) { d.Cmd("x-blockdev-set-iothread", args) }
	fail := func(args map[string]any, desc string) {
		t.Helper()
		d.MustFail("x-blockdev-set-iothread", args, "GenericError", desc)
	}
	fail(map[string]any{"node-name": "nope", "iothread": "io0"}, "Failed to find node with node-name='nope'")
	fail(map[string]any{"node-name": "r0", "iothread": "nope"}, "Cannot find iothread nope")
	set(map[string]any{"node-name": "r0", "iothread": "io0"})
	set(map[string]any{"node-name": "n0", "iothread": nil})
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "r0"})
	fail(map[string]any{"node-name": "r0", "iothread": "io0"},
		"Node r0 is associated with a BlockBackend and could be in use (use force=true to override this check)")
	set(map[string]any{"node-name": "n0", "iothread": "io0"})
	set(map[string]any{"node-name": "r0", "iothread": "io0", "force": true})
	fail(map[string]any{"node-name": "r0", "iothread": 3}, "Invalid parameter type for 'iothread', expected: StrOrNull")
	fail(map[string]any{"node-name": "r0"}, "Parameter 'iothread' is missing")
	// The export still serves.
	run(t, "nbdinfo", "--size", nbdURI(sock, "r0"))
}
