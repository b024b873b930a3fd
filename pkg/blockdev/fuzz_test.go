package blockdev

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockd/blockd/internal/fuzzcheck"
	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/qmp"

	_ "github.com/blockd/blockd/pkg/filters/cor"
	_ "github.com/blockd/blockd/pkg/filters/quorum"
	_ "github.com/blockd/blockd/pkg/formats/nbd"
	_ "github.com/blockd/blockd/pkg/formats/nullco"
	_ "github.com/blockd/blockd/pkg/formats/qcow2"
	_ "github.com/blockd/blockd/pkg/formats/raw"
	_ "github.com/blockd/blockd/pkg/formats/rbd"
	_ "github.com/blockd/blockd/pkg/formats/snapshotaccess"
)

// FuzzCommands runs a stream of QMP commands with arbitrary arguments
// through the real handlers, on a daemon with a qcow2 chain, a raw node,
// a null-co node and an NBD server, all in memory (see fuzzfs_test.go).
// It is the fuzz target for the argument decoding of every command and
// for the path blockdev-add takes from JSON to driver options and an
// open node. No command may panic, answer with an internal error (an
// argument type the decoder does not support), give a result that does
// not encode, allocate without bound, or hang; shutdown must finish.
//
// blkdebug is not linked: its config file option reads the host's files.
func FuzzCommands(f *testing.F) {
	for _, cmds := range fuzzCommandSeeds {
		var in []byte
		for _, c := range cmds {
			in = append(in, fuzzCommandCode(c[0]))
			in = append(append(in, c[1]...), '\n')
		}
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		fuzzcheck.Bounded(t, func() { runCommands(t, in) })
	})
}

// fuzzCommandSeeds: one command a line, its name then its arguments.
var fuzzCommandSeeds = [][][2]string{
	{
		{"query-named-block-nodes", `{"flat": true}`},
	},
	{
		{"blockdev-add", `{"driver": "qcow2", "node-name": "n1", "file": {"driver": "file", "filename": "base.qcow2"}, "read-only": true}`},
		{"blockdev-del", `{"node-name": "n1"}`},
	},
	{
		{"blockdev-add", `{"driver": "raw", "node-name": "r1", "file": "null", "offset": 512, "size": 4096}`},
		{"query-block", `{}`},
		{"x-debug-query-block-graph", `{}`},
	},
	{
		{"blockdev-add", `{"driver": "copy-on-read", "node-name": "c", "file": "top"}`},
		{"blockdev-add", `{"driver": "quorum", "node-name": "q", "vote-threshold": 1, "children": ["disk", {"driver": "null-co", "size": 1048576}]}`},
	},
	{
		{"blockdev-add", `{"driver": "quorum", "node-name": "q", "vote-threshold": 1, "children": [{"driver": "null-co", "size": 1048576}]}`},
		{"blockdev-add", `{"driver": "null-co", "node-name": "n2", "size": 1048576}`},
		{"x-blockdev-change", `{"parent": "q", "node": "n2"}`},
		{"x-blockdev-change", `{"parent": "q", "child": "children.0"}`},
		{"x-blockdev-amend", `{"job-id": "a", "node-name": "top", "options": {"driver": "qcow2", "encrypt": {"format": "luks", "state": "active"}}}`},
	},
	{
		{"object-add", `{"qom-type": "throttle-group", "id": "tg", "limits": {"iops-total": 1000}}`},
		{"blockdev-add", `{"driver": "throttle", "node-name": "t", "throttle-group": "tg", "file": "disk"}`},
		{"qom-get", `{"path": "/objects/tg", "property": "limits"}`},
		{"qom-set", `{"path": "tg", "property": "limits", "value": {"bps-total": 1048576}}`},
	},
	{
		{"block_resize", `{"node-name": "top", "size": 2097152}`},
		{"query-blockstats", `{"query-nodes": true}`},
	},
	{
		{"block-export-add", `{"type": "nbd", "id": "e", "node-name": "top", "writable": true, "allocation-depth": true}`},
		{"query-block-exports", `{}`},
		{"block-export-del", `{"id": "e", "mode": "hard"}`},
	},
	{
		{"nbd-server-add", `{"device": "disk", "name": "d", "writable": false}`},
		{"nbd-server-remove", `{"name": "d"}`},
	},
	{
		{"blockdev-create", `{"job-id": "c", "options": {"driver": "file", "filename": "new.qcow2", "size": 0}}`},
		{"query-jobs", `{}`},
	},
	{
		{"blockdev-create", `{"job-id": "c", "options": {"driver": "qcow2", "file": "disk", "size": 65536, "cluster-size": 512}}`},
	},
	{
		{"block-stream", `{"job-id": "s", "device": "top", "speed": 1}`},
		{"query-block-jobs", `{}`},
		{"block-job-set-speed", `{"device": "s", "speed": 0}`},
		{"job-pause", `{"id": "s"}`},
		{"job-resume", `{"id": "s"}`},
		{"block-job-cancel", `{"device": "s", "force": true}`},
	},
	{
		{"block-commit", `{"job-id": "k", "device": "top", "auto-finalize": false}`},
		{"job-finalize", `{"id": "k"}`},
	},
	{
		{"blockdev-add", `{"driver": "null-co", "node-name": "tgt", "size": 1048576}`},
		{"blockdev-mirror", `{"job-id": "m", "device": "disk", "target": "tgt", "sync": "full", "granularity": 65536}`},
		{"job-complete", `{"id": "m"}`},
		{"job-dismiss", `{"id": "m"}`},
	},
	{
		{"drive-mirror", `{"job-id": "dm", "device": "top", "target": "m.qcow2", "sync": "top", "format": "qcow2"}`},
	},
	{
		{"blockdev-add", `{"driver": "qcow2", "node-name": "ov", "file": {"driver": "file", "filename": "top.qcow2"}, "backing": null}`},
		{"blockdev-snapshot", `{"node": "disk", "overlay": "ov"}`},
	},
	{
		{"transaction", `{"actions": [{"type": "blockdev-snapshot-sync", "data": {"node-name": "top", "snapshot-file": "s.qcow2", "snapshot-node-name": "s"}}, {"type": "abort", "data": {}}]}`},
	},
	{
		{"blockdev-snapshot-sync", `{"node-name": "top", "snapshot-file": "s.qcow2", "snapshot-node-name": "s", "format": "qcow2"}`},
	},
	{
		{"change-backing-file", `{"device": "top", "image-node-name": "top", "backing-file": "other.qcow2"}`},
	},
	{
		{"blockdev-reopen", `{"options": [{"driver": "qcow2", "node-name": "top", "file": "top-file", "backing": "base", "read-only": true}]}`},
	},
	{
		{"nbd-server-start", `{"addr": {"type": "unix", "data": {"path": "/nonexistent/sock"}}}`},
	},
	{
		{"block-dirty-bitmap-add", `{"node": "top", "name": "b", "granularity": 512}`},
		{"block-dirty-bitmap-add", `{"node": "null", "name": "c", "disabled": true}`},
		{"block-dirty-bitmap-merge", `{"node": "top", "target": "b", "bitmaps": ["b", {"node": "base", "name": "c"}]}`},
		{"transaction", `{"actions": [{"type": "block-dirty-bitmap-clear", "data": {"node": "top", "name": "b"}}, {"type": "block-dirty-bitmap-remove", "data": {"node": "top", "name": "b"}}, {"type": "abort", "data": {}}]}`},
		{"x-debug-block-dirty-bitmap-sha256", `{"node": "top", "name": "b"}`},
	},
	{
		{"object-add", `{"qom-type": "iothread", "id": "io", "poll-max-ns": 0}`},
		{"object-del", `{"id": "io"}`},
	},
}

// fuzzImages are the files every input starts with: a qcow2 chain with
// some data in each image, made by blockd's own qcow2 creator (no
// qemu-img needed), and a raw disk.
var fuzzImages = sync.OnceValue(func() map[string][]byte {
	resetFuzzFS(map[string][]byte{"disk.raw": make([]byte, 1<<20), "base.qcow2": nil, "top.qcow2": nil})
	s := New(nil)
	ctx := context.Background()
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	for _, img := range []struct{ name, extra string }{
		{"base.qcow2", ""},
		{"top.qcow2", `, "backing-file": "base.qcow2", "backing-fmt": "qcow2"`},
	} {
		must(s.Execute(ctx, "blockdev-add", json.RawMessage(`{"driver": "file", "node-name": "f", "filename": "`+img.name+`"}`)))
		run, err := block.LookupCreator("qcow2").Decode(json.RawMessage(`{"driver": "qcow2", "file": "f", "size": 1048576, "cluster-size": 4096`+img.extra+`}`), qmp.Decode)
		must(err)
		must(run(ctx, s.G))
		must(s.Execute(ctx, "blockdev-del", json.RawMessage(`{"node-name": "f"}`)))
	}
	for i, name := range []string{"base.qcow2", "top.qcow2"} {
		must(s.Execute(ctx, "blockdev-add", json.RawMessage(`{"driver": "qcow2", "node-name": "img", "backing": null, "file": {"driver": "file", "filename": "`+name+`"}}`)))
		tx := s.G.Begin()
		r, err := tx.NewRoot(s.G.Lookup("img"), block.RootOptions{Perm: block.PermWrite | block.PermConsistentRead, Shared: block.PermAll})
		must(err)
		must(tx.Commit())
		must(r.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 12288), int64(i)*8192, 0))
		must(r.Flush(ctx))
		tx = s.G.Begin()
		tx.Detach(r)
		must(tx.Commit())
		must(s.Execute(ctx, "blockdev-del", json.RawMessage(`{"node-name": "img"}`)))
	}
	s.Shutdown(ctx)
	fuzzFS.Lock()
	defer fuzzFS.Unlock()
	out := map[string][]byte{}
	for name, f := range fuzzFS.m {
		out[name] = f.data
	}
	return out
})

// fuzzListener is the NBD server's listener: no client ever connects;
// exports are added and removed all the same.
type fuzzListener struct{ done chan struct{} }

func (l fuzzListener) Accept() (net.Conn, error) {
	<-l.done
	return nil, net.ErrClosed
}
func (l fuzzListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}
func (l fuzzListener) Addr() net.Addr { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }

// fuzzSetup is what every input starts with: nodes "base" and "top" (a
// qcow2 chain), "disk" (raw) and "null" (null-co), and an NBD server.
var fuzzSetup = []string{
	`{"driver": "qcow2", "node-name": "base", "file": {"driver": "file", "node-name": "base-file", "filename": "base.qcow2"}}`,
	`{"driver": "qcow2", "node-name": "top", "backing": "base", "file": {"driver": "file", "node-name": "top-file", "filename": "top.qcow2"}}`,
	`{"driver": "raw", "node-name": "disk", "file": {"driver": "file", "filename": "disk.raw"}}`,
	`{"driver": "null-co", "node-name": "null", "size": 1048576}`,
}

// noRun are the commands only decoded: nbd-server-start would remove and
// bind the socket path it is given; -stop would leave it to be started.
var noRun = map[string]any{
	"nbd-server-start": new(nbdServerStartArgs),
	"nbd-server-stop":  new(struct{}),
}

const maxFuzzCommands = 16

// runCommands runs one input under a watchdog: a hang fails with every
// goroutine's stack (before go test's own, which kills the fuzzing
// process after 10 s without a word).
func runCommands(t *testing.T, in []byte) {
	resetFuzzFS(fuzzImages())
	s := New(nil)
	s.mu.Lock()
	if err := s.startNBDLocked(fuzzListener{done: make(chan struct{})}, "", nil); err != nil {
		t.Fatal(err)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, o := range fuzzSetup {
		if err := s.Execute(ctx, "blockdev-add", json.RawMessage(o)); err != nil {
			t.Fatalf("setup %s: %v", o, err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		executeAll(t, s, ctx, in)
		s.Shutdown(context.Background())
	}()
	select {
	case <-done:
	case <-time.After(8 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("input hangs:\n%s\n%s", in, buf[:runtime.Stack(buf, true)])
	}
}

// fuzzCommandNames are the commands in a fixed order: an input names a
// command by one byte, so that a mutation of the name still names one.
var fuzzCommandNames = sync.OnceValue(func() []string {
	var names []string
	for name := range New(nil).handlers() {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
})

func fuzzCommandCode(name string) byte {
	i := slices.Index(fuzzCommandNames(), name)
	if i < 0 {
		panic("no command " + name)
	}
	return byte('A' + i)
}

// executeAll runs the commands of the input, one a line: a byte that
// names the command, then its arguments as they would come in QMP's
// "arguments" (raw: the handler's own decoding is what is fuzzed).
func executeAll(t *testing.T, s *Server, ctx context.Context, in []byte) {
	handlers := s.handlers()
	names := fuzzCommandNames()
	for i := 0; i < maxFuzzCommands && len(in) > 0; i++ {
		line, rest, _ := bytes.Cut(in, []byte("\n"))
		in = rest
		if len(line) == 0 {
			continue
		}
		name := names[int(line[0]-'A')%len(names)]
		raw := json.RawMessage(line[1:])
		if len(raw) == 0 {
			raw = nil
		} else if !json.Valid(raw) || dupKeys(json.NewDecoder(bytes.NewReader(raw))) {
			continue // the QMP parser would have refused it
		}
		if dst, ok := noRun[name]; ok {
			checkResult(t, name, nil, qmp.Decode(args(raw), "", dst))
			continue
		}
		res, err := handlers[name].ServeQMP(ctx, raw)
		if testing.Verbose() {
			t.Logf("%s: %v", name, err)
		}
		checkResult(t, name, res, err)
	}
}

// dupKeys reports whether the JSON value next in d has an object with a
// member twice, which QMP's parser refuses and encoding/json does not.
func dupKeys(d *json.Decoder) bool {
	tok, err := d.Token()
	if err != nil {
		return false
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for d.More() {
			k, _ := d.Token()
			if seen[k.(string)] || dupKeys(d) {
				return true
			}
			seen[k.(string)] = true
		}
	case json.Delim('['):
		for d.More() {
			if dupKeys(d) {
				return true
			}
		}
	default:
		return false
	}
	_, _ = d.Token() // the closing delimiter
	return false
}

// checkResult fails on what a client must never see: an internal error
// or a result the server cannot encode.
func checkResult(t *testing.T, cmd string, res any, err error) {
	if err != nil {
		var qe *qmp.Error
		if errors.As(err, &qe) && qe.Desc == "Internal error" || strings.Contains(err.Error(), "Internal error") {
			t.Errorf("%s: %v (%v)", cmd, err, errors.Unwrap(err))
		}
		return
	}
	if _, err := json.Marshal(res); err != nil {
		t.Errorf("%s: result %#v does not encode: %v", cmd, res, err)
	}
}
