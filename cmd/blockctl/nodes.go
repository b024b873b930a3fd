package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

// What the daemon reports, as far as the tree needs it.
type (
	blockGraph struct {
		Nodes []struct {
			ID   int    `json:"id"`
			Type string `json:"type"` // block-driver, block-backend, block-job
			Name string `json:"name"`
		} `json:"nodes"`
		Edges []struct {
			Parent int    `json:"parent"`
			Child  int    `json:"child"`
			Name   string `json:"name"`
		} `json:"edges"`
	}
	namedNode struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
		RO       bool   `json:"ro"`
		File     string `json:"file"`
		Image    struct {
			VirtualSize int64 `json:"virtual-size"`
		} `json:"image"`
	}
	blockExport struct {
		ID       string `json:"id"`
		Type     string `json:"type"`
		NodeName string `json:"node-name"`
	}
)

// treeNode is one block node in the tree shown by 'blockctl nodes' (and
// its JSON output).
type treeNode struct {
	Name      string      `json:"node-name"`
	Driver    string      `json:"driver"`
	Size      int64       `json:"size"`
	ReadOnly  bool        `json:"read-only"`
	Filename  string      `json:"filename,omitempty"` // protocol nodes only
	Filter    bool        `json:"filter"`
	JobFilter string      `json:"job-filter,omitempty"` // the job's id, or "?" when not known
	Users     []string    `json:"users,omitempty"`      // exports, jobs and named backends above it
	Children  []treeChild `json:"children"`
}

type treeChild struct {
	Child string    `json:"child"` // the edge's name: file, backing, children.0 ...
	Role  string    `json:"role,omitempty"`
	Node  *treeNode `json:"node"`
}

// filterDrivers are the drivers whose node presents its one child's data
// unchanged. commit_top and mirror_top are the filters jobs insert.
var filterDrivers = map[string]bool{
	"copy-on-read": true, "throttle": true, "blkdebug": true, "blklogwrites": true,
	"preallocate": true, "compress": true, "copy-before-write": true,
	"commit_top": true, "mirror_top": true,
}

var jobFilterDrivers = map[string]bool{"commit_top": true, "mirror_top": true}

// protocolDrivers are the drivers whose filename is worth showing.
var protocolDrivers = map[string]bool{"file": true, "host_device": true, "nbd": true}

// childRole names an edge's role from the parent's driver and the
// child's name: QMP does not report roles, so this is what QEMU's and
// blockd's drivers give their children. "" when unknown.
func childRole(parentDrv, child string) string {
	switch {
	case filterDrivers[parentDrv] && (child == "file" || child == "image" || child == "backing"):
		return "filtered"
	case child == "backing":
		return "cow"
	case child == "data-file", strings.HasPrefix(child, "children."), child == "target":
		return "data"
	case child == "file" && parentDrv == "raw":
		return "data"
	case child == "file":
		return "image" // data, metadata and primary
	}
	return ""
}

// buildTree turns the graph and the node list into one tree per root:
// each block node that no other block node has as a child. Roots are
// sorted by name, generated names (#block...) last; children by edge
// kind, then name. A node with several parents appears under each.
func buildTree(g blockGraph, named []namedNode, exports []blockExport) []*treeNode {
	info := map[string]namedNode{}
	for _, n := range named {
		info[n.NodeName] = n
	}
	nodes := map[int]*treeNode{}
	kind := map[int]string{}
	name := map[int]string{}
	for _, n := range g.Nodes {
		kind[n.ID], name[n.ID] = n.Type, n.Name
		if n.Type == "block-driver" {
			nodes[n.ID] = newTreeNode(n.Name, info[n.Name])
		}
	}
	for _, e := range exports {
		for _, n := range nodes {
			if n.Name == e.NodeName {
				n.Users = append(n.Users, "export "+e.ID)
			}
		}
	}
	hasParent := map[int]bool{}
	for _, e := range g.Edges {
		child, ok := nodes[e.Child]
		if !ok {
			continue
		}
		if p, ok := nodes[e.Parent]; ok {
			p.Children = append(p.Children, treeChild{Child: e.Name, Role: childRole(p.Driver, e.Name), Node: child})
			hasParent[e.Child] = true
			continue
		}
		addUser(child, kind[e.Parent], name[e.Parent], e.Name)
	}
	var roots []*treeNode
	for id, n := range nodes {
		sortChildren(n)
		sort.Strings(n.Users)
		if n.Filter && jobFilterDrivers[n.Driver] && n.JobFilter == "" {
			n.JobFilter = "?"
		}
		if !hasParent[id] {
			roots = append(roots, n)
		}
	}
	sort.Slice(roots, func(i, j int) bool { return nameLess(roots[i].Name, roots[j].Name) })
	return roots
}

func newTreeNode(name string, n namedNode) *treeNode {
	t := &treeNode{Name: name, Driver: n.Drv, Size: n.Image.VirtualSize, ReadOnly: n.RO, Filter: filterDrivers[n.Drv], Children: []treeChild{}}
	if protocolDrivers[n.Drv] && !strings.HasPrefix(n.File, "json:") {
		t.Filename = n.File
	}
	return t
}

// addUser records a parent that is not a block node: a job (whose "main
// node" edge to a filter makes the filter that job's) or a named backend.
// Anonymous backends (exports', jobs' own) are left out: exports are
// listed by id from query-block-exports instead.
func addUser(n *treeNode, kind, name, edge string) {
	switch kind {
	case "block-job":
		n.Users = append(n.Users, fmt.Sprintf("job %s (%s)", name, edge))
		if n.Filter && edge == "main node" {
			n.JobFilter = name
		}
	case "block-backend":
		if name != "" {
			n.Users = append(n.Users, "backend "+name)
		}
	}
}

// edgeOrder puts a node's own storage first, then what lies below it.
var edgeOrder = map[string]int{"file": 0, "image": 0, "data-file": 1, "backing": 2}

func sortChildren(n *treeNode) {
	rank := func(c treeChild) int {
		if r, ok := edgeOrder[c.Child]; ok {
			return r
		}
		return 3
	}
	sort.SliceStable(n.Children, func(i, j int) bool {
		a, b := n.Children[i], n.Children[j]
		if rank(a) != rank(b) {
			return rank(a) < rank(b)
		}
		return nameLess(a.Child, b.Child)
	})
}

// nameLess orders generated names (#block...) after given ones, and
// children.2 before children.10.
func nameLess(a, b string) bool {
	if ga, gb := strings.HasPrefix(a, "#"), strings.HasPrefix(b, "#"); ga != gb {
		return gb
	}
	if len(a) != len(b) && strings.TrimRight(a, "0123456789") == strings.TrimRight(b, "0123456789") {
		return len(a) < len(b)
	}
	return a < b
}

// renderTree writes the trees as text:
//
//	top  qcow2  64 MiB  rw  [export e0]
//	├── file [image]: top-file  file  193 KiB  rw  top.qcow2
//	└── backing [cow]: mid  qcow2  64 MiB  ro
func renderTree(w io.Writer, roots []*treeNode) {
	seen := map[*treeNode]bool{}
	for _, r := range roots {
		fmt.Fprintln(w, describe(r))
		seen[r] = true
		renderChildren(w, r, "", seen)
	}
}

func renderChildren(w io.Writer, n *treeNode, indent string, seen map[*treeNode]bool) {
	for i, c := range n.Children {
		branch, next := "├── ", "│   "
		if i == len(n.Children)-1 {
			branch, next = "└── ", "    "
		}
		edge := c.Child
		if c.Role != "" {
			edge += " [" + c.Role + "]"
		}
		if seen[c.Node] {
			fmt.Fprintf(w, "%s%s%s: %s (shown above)\n", indent, branch, edge, c.Node.Name)
			continue
		}
		seen[c.Node] = true
		fmt.Fprintf(w, "%s%s%s: %s\n", indent, branch, edge, describe(c.Node))
		renderChildren(w, c.Node, indent+next, seen)
	}
}

// describe is one node's line: name, driver, size, ro/rw, then marks.
func describe(n *treeNode) string {
	ro := "rw"
	if n.ReadOnly {
		ro = "ro"
	}
	s := []string{n.Name, n.Driver, humanSize(n.Size), ro}
	switch {
	case n.JobFilter == "?":
		s = append(s, "(job filter)")
	case n.JobFilter != "":
		s = append(s, "(filter of job "+n.JobFilter+")")
	case n.Filter:
		s = append(s, "(filter)")
	}
	if n.Filename != "" {
		s = append(s, n.Filename)
	}
	if len(n.Users) > 0 {
		s = append(s, "["+strings.Join(n.Users, ", ")+"]")
	}
	return strings.Join(s, "  ")
}

// humanSize prints a byte count in the largest binary unit that keeps
// it readable: 512 B, 64 MiB, 1.5 GiB.
func humanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, u := float64(n), 0
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	if u == 0 || f == float64(int64(f)) {
		return fmt.Sprintf("%d %s", int64(f), units[u])
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", f), ".0") + " " + units[u]
}

func (a *app) nodesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "Show the block graph as a tree from each root",
		Long: `nodes shows every block node as a tree from each root (a node no other
node has as a child): each edge with its child name and role, each node
with its driver, size and read-only or read-write; filters and the
implicit filters of jobs are marked, and exports and jobs are shown as
the node's users. -o json prints the same trees for scripts.`,
		Example: `  blockctl nodes
  blockctl nodes -o json | jq '.roots[].["node-name"]'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			roots, err := a.queryTree(cmd.Context())
			if err != nil {
				return err
			}
			if a.json() {
				b, err := json.Marshal(map[string]any{"roots": roots})
				if err != nil {
					return err
				}
				return a.printJSON(b)
			}
			renderTree(a.stdout, roots)
			return nil
		},
	}
}

// queryTree asks the daemon for the graph (x-debug-query-block-graph),
// the nodes (query-named-block-nodes, flat) and the exports.
func (a *app) queryTree(ctx context.Context) ([]*treeNode, error) {
	var g blockGraph
	named, exports, _, err := a.queryGraph(ctx, &g)
	if err != nil {
		return nil, err
	}
	return buildTree(g, named, exports), nil
}
