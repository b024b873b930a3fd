package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// Replies recorded from qemu-storage-daemon 7.2 (x-debug-query-block-graph,
// and the drv/ro of query-named-block-nodes as "name drv ro").
const (
	// top -> base, each on a file node, nothing above top.
	chainGraph = `{"edges": [{"name": "file", "parent": 6, "shared-perm": ["write-unchanged", "consistent-read"], "perm": ["resize", "write", "consistent-read"], "child": 5}, {"name": "backing", "parent": 6, "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"], "perm": [], "child": 4}, {"name": "file", "parent": 4, "shared-perm": ["write-unchanged", "consistent-read"], "perm": ["consistent-read"], "child": 3}], "nodes": [{"name": "top", "type": "block-driver", "id": 6}, {"name": "top-file", "type": "block-driver", "id": 5}, {"name": "base", "type": "block-driver", "id": 4}, {"name": "base-file", "type": "block-driver", "id": 3}]}`
	// The chain exported as e0 while blockdev-mirror m0 copies top to
	// tgt through its filter mfilter (the export moved up onto it).
	mirrorGraph = `{"edges": [{"name": "backing", "parent": 2, "shared-perm": ["write-unchanged", "write", "consistent-read"], "perm": ["write", "consistent-read"], "child": 6}, {"name": "file", "parent": 4, "shared-perm": ["write-unchanged"], "perm": ["resize", "write", "consistent-read"], "child": 10}, {"name": "file", "parent": 6, "shared-perm": ["write-unchanged", "consistent-read"], "perm": ["resize", "write", "consistent-read"], "child": 9}, {"name": "backing", "parent": 6, "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"], "perm": ["consistent-read"], "child": 8}, {"name": "file", "parent": 8, "shared-perm": ["write-unchanged", "consistent-read"], "perm": ["consistent-read"], "child": 7}, {"name": "main node", "parent": 5, "shared-perm": ["write-unchanged", "write", "consistent-read"], "perm": ["consistent-read"], "child": 2}, {"name": "source", "parent": 5, "shared-perm": ["write-unchanged", "write", "consistent-read"], "perm": [], "child": 6}, {"name": "target", "parent": 5, "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"], "perm": [], "child": 4}, {"name": "root", "parent": 3, "shared-perm": ["write-unchanged"], "perm": ["write"], "child": 4}, {"name": "root", "parent": 1, "shared-perm": ["write-unchanged", "write", "consistent-read"], "perm": ["write", "consistent-read"], "child": 2}], "nodes": [{"name": "mfilter", "type": "block-driver", "id": 2}, {"name": "tgt", "type": "block-driver", "id": 4}, {"name": "tgt-file", "type": "block-driver", "id": 10}, {"name": "top", "type": "block-driver", "id": 6}, {"name": "top-file", "type": "block-driver", "id": 9}, {"name": "base", "type": "block-driver", "id": 8}, {"name": "base-file", "type": "block-driver", "id": 7}, {"name": "m0", "type": "block-job", "id": 5}, {"name": "", "type": "block-backend", "id": 3}, {"name": "", "type": "block-backend", "id": 1}]}`
)

var (
	chainNamedRO  = []string{"top qcow2 rw", "top-file file rw", "base qcow2 ro", "base-file file ro"}
	mirrorNamedRO = append([]string{"mfilter mirror_top rw", "tgt qcow2 rw", "tgt-file file rw"}, chainNamedRO...)
)

func namedFromSpec(spec []string) []namedNode {
	var out []namedNode
	for _, s := range spec {
		f := strings.Fields(s)
		out = append(out, namedNode{NodeName: f[0], Drv: f[1], RO: f[2] == "ro"})
	}
	return out
}

func TestRenderDot(t *testing.T) {
	tests := []struct {
		name    string
		graph   string
		named   []string
		exports []blockExport
		// want are lines the output must have; wantNot lines it must not.
		want, wantNot []string
	}{{
		name:  "chain: the root double-bordered, ids by name, permissions sorted",
		graph: chainGraph, named: chainNamedRO,
		want: []string{
			`  "top" [label="top\nqcow2 rw", shape=box, peripheries=2];`,
			`  "base" [label="base\nqcow2 ro", shape=box];`,
			`  "top" -> "top-file" [label="file\nperm: consistent-read,write,resize\nshared: consistent-read,write-unchanged"];`,
			`  "top" -> "base" [label="backing\nperm: -\nshared: consistent-read,write,write-unchanged,resize"];`,
		},
		wantNot: []string{"invhouse", "hexagon"},
	}, {
		name:  "mirror: job, its filter, the export's backend and the target's",
		graph: mirrorGraph, named: mirrorNamedRO, exports: []blockExport{{ID: "e0", Type: "nbd", NodeName: "mfilter"}},
		want: []string{
			`  "mfilter" [label="mfilter\nmirror_top rw\nfilter of job m0", shape=box, peripheries=2, style="filled,dashed", fillcolor="lightgrey"];`,
			`  "job m0" [label="job m0", shape=hexagon];`,
			`  "backend of mfilter" [label="export e0", shape=invhouse];`,
			`  "backend of tgt" [label="backend", shape=invhouse];`,
			`  "job m0" -> "mfilter" [label="main node\nperm: consistent-read\nshared: consistent-read,write,write-unchanged"];`,
			`  "backend of tgt" -> "tgt" [label="root\nperm: write\nshared: write-unchanged"];`,
		},
		// The filter is the root now, top is not.
		wantNot: []string{`"top" [label="top\nqcow2 rw", shape=box, peripheries=2]`},
	}, {
		name:  "two anonymous backends on one node are numbered; a named one keeps its name",
		graph: `{"nodes": [{"id": 1, "type": "block-driver", "name": "n"}, {"id": 2, "type": "block-backend", "name": ""}, {"id": 3, "type": "block-backend", "name": ""}, {"id": 4, "type": "block-backend", "name": "drive0"}], "edges": [{"parent": 2, "child": 1, "name": "root", "perm": [], "shared-perm": ["graph-mod", "x-new"]}, {"parent": 3, "child": 1, "name": "root", "perm": [], "shared-perm": []}, {"parent": 4, "child": 1, "name": "root", "perm": [], "shared-perm": []}]}`,
		named: []string{"n throttle rw"},
		want: []string{
			`  "backend of n" [label="backend", shape=invhouse];`,
			`  "backend of n #2" [label="backend", shape=invhouse];`,
			`  "backend drive0" [label="backend drive0", shape=invhouse];`,
			`  "n" [label="n\nthrottle rw", shape=box, peripheries=2, style=dashed];`,
			`  "backend of n" -> "n" [label="root\nperm: -\nshared: graph-mod,x-new"];`,
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g permGraph
			if err := json.Unmarshal([]byte(tt.graph), &g); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			renderDot(&buf, g, namedFromSpec(tt.named), tt.exports)
			out := buf.String()
			lines := map[string]bool{}
			for _, l := range strings.Split(out, "\n") {
				lines[l] = true
			}
			for _, w := range tt.want {
				if !lines[w] {
					t.Errorf("missing line %s\nin:\n%s", w, out)
				}
			}
			for _, w := range tt.wantNot {
				if strings.Contains(out, w) {
					t.Errorf("has %s\nin:\n%s", w, out)
				}
			}
			if !strings.HasPrefix(out, "digraph blockgraph {\n") || !strings.HasSuffix(out, "}\n") {
				t.Errorf("not one digraph:\n%s", out)
			}
		})
	}
}

// TestRenderDotStable: the same graph with other ids and in another
// order (as another run or the other daemon reports it) prints the
// same text.
func TestRenderDotStable(t *testing.T) {
	var a, b permGraph
	if err := json.Unmarshal([]byte(mirrorGraph), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(mirrorGraph), &b); err != nil {
		t.Fatal(err)
	}
	for i := range b.Nodes {
		b.Nodes[i].ID += 100
	}
	for i := range b.Edges {
		b.Edges[i].Parent += 100
		b.Edges[i].Child += 100
		p := b.Edges[i].Perm
		for l, r := 0, len(p)-1; l < r; l, r = l+1, r-1 {
			p[l], p[r] = p[r], p[l]
		}
	}
	for l, r := 0, len(b.Edges)-1; l < r; l, r = l+1, r-1 {
		b.Edges[l], b.Edges[r] = b.Edges[r], b.Edges[l]
	}
	named := namedFromSpec(mirrorNamedRO)
	ex := []blockExport{{ID: "e0", NodeName: "mfilter"}}
	var ba, bb bytes.Buffer
	renderDot(&ba, a, named, ex)
	renderDot(&bb, b, named, ex)
	if ba.String() != bb.String() {
		t.Errorf("renumbered graph prints differently:\n%s\n---\n%s", ba.String(), bb.String())
	}
}
