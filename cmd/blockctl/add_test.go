package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestBlockdevArgs(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // the JSON sent, or the error
	}{
		{"dotted keys", []string{"driver=qcow2,node-name=top,file.driver=file,file.filename=top.qcow2"},
			`{"driver":"qcow2","file":{"driver":"file","filename":"top.qcow2"},"node-name":"top"}`},
		{"items in several arguments, typed", []string{"driver=null-co", "node-name=n", "size=1048576", "read-zeroes=on", "read-only=off"},
			`{"driver":"null-co","node-name":"n","read-only":false,"read-zeroes":true,"size":1048576}`},
		{"a comma in a value", []string{"driver=file,node-name=f,filename=a,,b.img"},
			`{"driver":"file","filename":"a,b.img","node-name":"f"}`},
		{"backing by name, cache options", []string{"driver=qcow2,node-name=top,backing=mid,cache.direct=on,file=top-file"},
			`{"backing":"mid","cache":{"direct":true},"driver":"qcow2","file":"top-file","node-name":"top"}`},
		{"a list", []string{"driver=quorum,node-name=q,vote-threshold=2,children.0=a,children.1=b,children.2=c"},
			`{"children":["a","b","c"],"driver":"quorum","node-name":"q","vote-threshold":2}`},
		{"JSON as it is", []string{`{"driver":"nbd","node-name":"x"}`}, `{"driver":"nbd","node-name":"x"}`},
		{"bad JSON", []string{`{"driver":`}, `error: not a JSON object: {"driver":`},
		{"no =", []string{"driver=raw,oops"}, `error: Expected '=' after parameter 'oops'`},
		{"not a bool", []string{"driver=null-co,node-name=n,read-only=maybe"}, `error: Parameter 'read-only' expects 'on' or 'off'`},
		{"unknown driver", []string{"driver=nosuch,node-name=n"}, `error: Parameter 'driver' does not accept value 'nosuch'`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := blockdevArgs(tc.args)
			checkArgs(t, got, err, tc.want)
		})
	}
}

func TestExportArgs(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"implied type", []string{"nbd,id=e0,node-name=top,writable=on"}, `{"id":"e0","node-name":"top","type":"nbd","writable":true}`},
		{"spelled out", []string{"type=nbd", "id=e1", "node-name=base", "name=base-image", "allocation-depth=on"},
			`{"allocation-depth":true,"id":"e1","name":"base-image","node-name":"base","type":"nbd"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := exportArgs(tc.args)
			checkArgs(t, got, err, tc.want)
		})
	}
}

func TestCreateArgs(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"file", []string{"driver=file,filename=a.qcow2,size=0"}, `{"driver":"file","filename":"a.qcow2","size":0}`},
		{"qcow2 overlay, sizes and bools typed", []string{"driver=qcow2", "file=f", "size=64M", "cluster-size=64k", "lazy-refcounts=on", "backing-file=top.qcow2", "backing-fmt=qcow2"},
			`{"backing-file":"top.qcow2","backing-fmt":"qcow2","cluster-size":65536,"driver":"qcow2","file":"f","lazy-refcounts":true,"size":67108864}`},
		{"no create for the driver", []string{"driver=throttle,file=f"}, `error: Parameter 'driver' does not accept value 'throttle'`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := createArgs(tc.args)
			checkArgs(t, got, err, tc.want)
		})
	}
}

// checkArgs compares the JSON made (keys sorted) or the error with want.
func checkArgs(t *testing.T, got json.RawMessage, err error, want string) {
	t.Helper()
	if strings.HasPrefix(want, "error: ") {
		if err == nil || err.Error() != strings.TrimPrefix(want, "error: ") {
			t.Errorf("got %s, %v; want %s", got, err, want)
		}
		return
	}
	if err != nil {
		t.Fatalf("error %v, want %s", err, want)
	}
	var v any
	if err := json.Unmarshal(got, &v); err != nil {
		t.Fatal(err)
	}
	sorted, _ := json.Marshal(v)
	if string(sorted) != want {
		t.Errorf("got  %s\nwant %s", sorted, want)
	}
}

// TestHelpExamples: every command's --help shows an example.
func TestHelpExamples(t *testing.T) {
	a := &app{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Example == "" && c.Name() != "help" && (c.Parent() == nil || c.Parent().Name() != "completion") {
			t.Errorf("%s has no example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(a.rootCommand())
}
