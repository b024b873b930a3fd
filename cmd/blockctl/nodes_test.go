package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// graphSpec is a hand-written graph: nodes as "id type name", edges as
// "parent child name", node details as "name drv size ro".
type graphSpec struct {
	nodes, edges, named []string
	exports             []blockExport
}

func (s graphSpec) build(t *testing.T) []*treeNode {
	t.Helper()
	var all blockGraph
	for _, n := range s.nodes {
		f := append(strings.Fields(n), "")
		var g blockGraph
		mustUnmarshal(t, fmt.Sprintf(`{"nodes":[{"id":%s,"type":%q,"name":%q}]}`, f[0], f[1], f[2]), &g)
		all.Nodes = append(all.Nodes, g.Nodes...)
	}
	for _, e := range s.edges {
		f := strings.SplitN(e, " ", 3)
		var g blockGraph
		mustUnmarshal(t, fmt.Sprintf(`{"edges":[{"parent":%s,"child":%s,"name":%q}]}`, f[0], f[1], f[2]), &g)
		all.Edges = append(all.Edges, g.Edges...)
	}
	var named []namedNode
	for _, n := range s.named {
		f := append(strings.Fields(n), "")
		var nn namedNode
		mustUnmarshal(t, fmt.Sprintf(`{"node-name":%q,"drv":%q,"image":{"virtual-size":%s},"ro":%s,"file":%q}`, f[0], f[1], f[2], f[3], f[4]), &nn)
		named = append(named, nn)
	}
	return buildTree(all, named, s.exports)
}

func mustUnmarshal(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
}

// chain is the reference chain top -> mid -> base, each on a file node.
var chainNodes = []string{"1 block-driver top", "2 block-driver top-file", "3 block-driver mid", "4 block-driver mid-file", "5 block-driver base", "6 block-driver base-file"}
var chainEdges = []string{"1 2 file", "1 3 backing", "3 4 file", "3 5 backing", "5 6 file"}
var chainNamed = []string{"top qcow2 67108864 false", "top-file file 200704 false /img/top.qcow2", "mid qcow2 67108864 true",
	"mid-file file 200704 true /img/mid.qcow2", "base qcow2 67108864 true", "base-file file 33751040 true /img/base.qcow2"}

func TestTreeRender(t *testing.T) {
	tests := []struct {
		name string
		spec graphSpec
		want string
	}{{
		name: "chain with an export",
		spec: graphSpec{
			nodes: append([]string{"7 block-backend"}, chainNodes...), edges: append([]string{"7 1 root"}, chainEdges...), named: chainNamed,
			exports: []blockExport{{ID: "e0", Type: "nbd", NodeName: "top"}},
		},
		want: `
top  qcow2  64 MiB  rw  [export e0]
├── file [image]: top-file  file  196 KiB  rw  /img/top.qcow2
└── backing [cow]: mid  qcow2  64 MiB  ro
    ├── file [image]: mid-file  file  196 KiB  ro  /img/mid.qcow2
    └── backing [cow]: base  qcow2  64 MiB  ro
        └── file [image]: base-file  file  32.2 MiB  ro  /img/base.qcow2
`,
	}, {
		name: "stream: the copy-on-read filter is the job's",
		spec: graphSpec{
			nodes: append([]string{"7 block-driver #block043", "8 block-job s1", "9 block-backend"}, chainNodes...),
			edges: append([]string{"9 7 root", "7 1 file", "8 7 main node", "8 1 active node", "8 3 intermediate node"}, chainEdges...),
			named: append([]string{"#block043 copy-on-read 67108864 false"}, chainNamed...),
		},
		want: `
#block043  copy-on-read  64 MiB  rw  (filter of job s1)  [job s1 (main node)]
└── file [filtered]: top  qcow2  64 MiB  rw  [job s1 (active node)]
    ├── file [image]: top-file  file  196 KiB  rw  /img/top.qcow2
    └── backing [cow]: mid  qcow2  64 MiB  ro  [job s1 (intermediate node)]
        ├── file [image]: mid-file  file  196 KiB  ro  /img/mid.qcow2
        └── backing [cow]: base  qcow2  64 MiB  ro
            └── file [image]: base-file  file  32.2 MiB  ro  /img/base.qcow2
`,
	}, {
		name: "shared backing, commit_top, roots sorted",
		spec: graphSpec{
			nodes: []string{"1 block-driver #block9", "2 block-driver b", "3 block-driver a", "4 block-driver base", "5 block-driver #block10"},
			edges: []string{"3 4 backing", "2 4 backing", "1 4 backing"},
			named: []string{"#block9 commit_top 1024 false", "b raw 512 true", "a qcow2 1048576 false", "base null-co 1536 true", "#block10 null-co 0 false"},
		},
		want: `
a  qcow2  1 MiB  rw
└── backing [cow]: base  null-co  1.5 KiB  ro
b  raw  512 B  ro
└── backing [cow]: base (shown above)
#block9  commit_top  1 KiB  rw  (job filter)
└── backing [filtered]: base (shown above)
#block10  null-co  0 B  rw
`,
	}, {
		name: "quorum children in number order",
		spec: graphSpec{
			nodes: []string{"1 block-driver q", "2 block-driver c0", "3 block-driver c10", "4 block-driver c2"},
			edges: []string{"1 3 children.10", "1 4 children.2", "1 2 children.0"},
			named: []string{"q quorum 4096 false", "c0 null-co 4096 false", "c10 null-co 4096 false", "c2 null-co 4096 false"},
		},
		want: `
q  quorum  4 KiB  rw
├── children.0 [data]: c0  null-co  4 KiB  rw
├── children.2 [data]: c2  null-co  4 KiB  rw
└── children.10 [data]: c10  null-co  4 KiB  rw
`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			renderTree(&b, tc.spec.build(t))
			if got, want := b.String(), strings.TrimPrefix(tc.want, "\n"); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestTreeJSON(t *testing.T) {
	roots := graphSpec{nodes: chainNodes, edges: chainEdges, named: chainNamed}.build(t)
	b, err := json.Marshal(map[string]any{"roots": roots})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Roots []struct {
			Name     string `json:"node-name"`
			RO       bool   `json:"read-only"`
			Size     int64  `json:"size"`
			Children []struct {
				Child, Role string
				Node        struct {
					Name string `json:"node-name"`
				}
			}
		}
	}
	mustUnmarshal(t, string(b), &got)
	if len(got.Roots) != 1 || got.Roots[0].Name != "top" || got.Roots[0].RO || got.Roots[0].Size != 64<<20 {
		t.Fatalf("roots: %s", b)
	}
	c := got.Roots[0].Children
	if len(c) != 2 || c[0].Child != "file" || c[0].Role != "image" || c[1].Child != "backing" || c[1].Role != "cow" || c[1].Node.Name != "mid" {
		t.Errorf("children of top: %+v", c)
	}
}

func TestHumanSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {512, "512 B"}, {1023, "1023 B"}, {1024, "1 KiB"}, {1536, "1.5 KiB"}, {64 << 20, "64 MiB"}, {1<<30 + 1, "1 GiB"}, {3 << 40, "3 TiB"}} {
		if got := humanSize(tc.n); got != tc.want {
			t.Errorf("humanSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestChildRole(t *testing.T) {
	for _, tc := range []struct{ drv, child, want string }{
		{"qcow2", "file", "image"}, {"qcow2", "backing", "cow"}, {"qcow2", "data-file", "data"},
		{"raw", "file", "data"}, {"throttle", "file", "filtered"}, {"blkdebug", "image", "filtered"},
		{"mirror_top", "backing", "filtered"}, {"quorum", "children.3", "data"}, {"copy-before-write", "target", "data"},
		{"nbd", "weird", ""},
	} {
		if got := childRole(tc.drv, tc.child); got != tc.want {
			t.Errorf("childRole(%s, %s) = %q, want %q", tc.drv, tc.child, got, tc.want)
		}
	}
}
