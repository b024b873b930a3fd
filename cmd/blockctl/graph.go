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

// permGraph is x-debug-query-block-graph's reply with what the picture
// needs beyond the tree: each edge's permissions.
type permGraph struct {
	Nodes []struct {
		ID   int    `json:"id"`
		Type string `json:"type"` // block-driver, block-backend, block-job
		Name string `json:"name"`
	} `json:"nodes"`
	Edges []struct {
		Parent int      `json:"parent"`
		Child  int      `json:"child"`
		Name   string   `json:"name"`
		Perm   []string `json:"perm"`
		Shared []string `json:"shared-perm"`
	} `json:"edges"`
}

// dotNode is one vertex of the picture. Its id is stable across runs
// and daemons (the graph's numeric ids are not): a block node's name, a
// job's id, and for an anonymous backend the node below it.
type dotNode struct {
	id, label string
	attrs     []string
}

// dotEdge is one edge, between dotNode ids.
type dotEdge struct {
	from, to, label string
}

// permOrder is the order permissions are listed in, whatever order the
// daemon sent them in (qsd's order follows its bit values, reversed).
var permOrder = []string{"consistent-read", "write", "write-unchanged", "resize", "graph-mod"}

func sortedPerms(p []string) string {
	rank := func(name string) int {
		for i, n := range permOrder {
			if n == name {
				return i
			}
		}
		return len(permOrder) // unknown names last
	}
	p = append([]string(nil), p...)
	sort.Slice(p, func(i, j int) bool {
		if ri, rj := rank(p[i]), rank(p[j]); ri != rj {
			return ri < rj
		}
		return p[i] < p[j]
	})
	if len(p) == 0 {
		return "-"
	}
	return strings.Join(p, ",")
}

// renderDot writes the graph in Graphviz dot: block nodes as boxes
// (roots, the nodes no block node has as a child, with a double
// border; filters dashed; a job's own filter filled), jobs as hexagons,
// backends as inverted houses (an export's named after it), every edge
// labelled with the child's name and the permissions taken and shared.
// The output is sorted, so the same graph always prints the same text.
func renderDot(w io.Writer, g permGraph, named []namedNode, exports []blockExport) {
	nodes, edges := dotGraph(g, named, exports)
	fmt.Fprintln(w, "digraph blockgraph {")
	fmt.Fprintln(w, "  rankdir=TB;")
	fmt.Fprintln(w, `  node [fontname="monospace", fontsize=10];`)
	fmt.Fprintln(w, `  edge [fontname="monospace", fontsize=9];`)
	for _, n := range nodes {
		attrs := append([]string{"label=" + dotQuote(n.label)}, n.attrs...)
		fmt.Fprintf(w, "  %s [%s];\n", dotQuote(n.id), strings.Join(attrs, ", "))
	}
	for _, e := range edges {
		fmt.Fprintf(w, "  %s -> %s [label=%s];\n", dotQuote(e.from), dotQuote(e.to), dotQuote(e.label))
	}
	fmt.Fprintln(w, "}")
}

// dotGraph turns the daemon's graph into sorted vertices and edges.
func dotGraph(g permGraph, named []namedNode, exports []blockExport) ([]dotNode, []dotEdge) {
	info := map[string]namedNode{}
	for _, n := range named {
		info[n.NodeName] = n
	}
	exported := map[string][]string{}
	for _, e := range exports {
		exported[e.NodeName] = append(exported[e.NodeName], e.ID)
	}
	byID := map[int]int{}
	hasDriverParent := map[int]bool{}
	for i, n := range g.Nodes {
		byID[n.ID] = i
	}
	jobFilterOf := map[int]string{}
	for _, e := range g.Edges {
		p := g.Nodes[byID[e.Parent]]
		switch {
		case p.Type == "block-driver":
			hasDriverParent[e.Child] = true
		case p.Type == "block-job" && e.Name == "main node":
			jobFilterOf[e.Child] = p.Name
		}
	}
	ids := anonymousIDs(g, exported)
	var nodes []dotNode
	for _, n := range g.Nodes {
		v := dotNode{id: ids[n.ID]}
		switch n.Type {
		case "block-driver":
			v.label, v.attrs = driverVertex(n.Name, info[n.Name], !hasDriverParent[n.ID], jobFilterOf[n.ID])
		case "block-job":
			v.label, v.attrs = "job "+n.Name, []string{"shape=hexagon"}
		default:
			v.label, v.attrs = backendLabel(g, n.ID, n.Name, exported), []string{"shape=invhouse"}
		}
		nodes = append(nodes, v)
	}
	var edges []dotEdge
	for _, e := range g.Edges {
		edges = append(edges, dotEdge{from: ids[e.Parent], to: ids[e.Child],
			label: e.Name + "\nperm: " + sortedPerms(e.Perm) + "\nshared: " + sortedPerms(e.Shared)})
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].id < nodes[j].id })
	sort.Slice(edges, func(i, j int) bool {
		a, b := edges[i], edges[j]
		if a.from != b.from {
			return a.from < b.from
		}
		if a.to != b.to {
			return a.to < b.to
		}
		return a.label < b.label
	})
	return nodes, edges
}

// driverVertex labels a block node "name\ndriver rw" and picks its look.
func driverVertex(name string, n namedNode, root bool, job string) (string, []string) {
	ro := "rw"
	if n.RO {
		ro = "ro"
	}
	label := name + "\n" + n.Drv + " " + ro
	attrs := []string{"shape=box"}
	if root {
		attrs = append(attrs, "peripheries=2")
	}
	switch {
	case job != "":
		label += "\nfilter of job " + job
		attrs = append(attrs, `style="filled,dashed"`, `fillcolor="lightgrey"`)
	case filterDrivers[n.Drv]:
		attrs = append(attrs, "style=dashed")
	}
	return label, attrs
}

// anonymousIDs gives every vertex its stable id: block nodes their
// name, jobs "job ID", named backends "backend NAME", and anonymous
// backends "backend of NODE" (numbered when a node has several).
func anonymousIDs(g permGraph, exported map[string][]string) map[int]string {
	ids := map[int]string{}
	name := map[int]string{}
	for _, n := range g.Nodes {
		name[n.ID] = n.Name
	}
	var anon []int
	for _, n := range g.Nodes {
		switch {
		case n.Type == "block-driver":
			ids[n.ID] = n.Name
		case n.Type == "block-job":
			ids[n.ID] = "job " + n.Name
		case n.Name != "":
			ids[n.ID] = "backend " + n.Name
		default:
			anon = append(anon, n.ID)
		}
	}
	below := func(id int) string { return strings.Join(childNames(g, id, name), ",") }
	sort.SliceStable(anon, func(i, j int) bool { return below(anon[i]) < below(anon[j]) })
	count := map[string]int{}
	for _, id := range anon {
		b := below(id)
		count[b]++
		ids[id] = "backend of " + b
		if count[b] > 1 {
			ids[id] += fmt.Sprintf(" #%d", count[b])
		}
	}
	return ids
}

func childNames(g permGraph, id int, name map[int]string) []string {
	var out []string
	for _, e := range g.Edges {
		if e.Parent == id {
			out = append(out, name[e.Child])
		}
	}
	sort.Strings(out)
	return out
}

// backendLabel names a backend by what uses it: an anonymous backend
// above an exported node is taken to be the export's (QMP does not link
// the two, and an export is the usual anonymous user of a node).
func backendLabel(g permGraph, id int, name string, exported map[string][]string) string {
	if name != "" {
		return "backend " + name
	}
	nodeName := map[int]string{}
	for _, n := range g.Nodes {
		nodeName[n.ID] = n.Name
	}
	for _, e := range g.Edges {
		if e.Parent == id {
			if ex := exported[nodeName[e.Child]]; len(ex) > 0 {
				return "export " + strings.Join(ex, ",")
			}
		}
	}
	return "backend"
}

// dotQuote quotes a string as a dot ID: newlines become \n.
func dotQuote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + strings.ReplaceAll(s, "\n", `\n`) + `"`
}

func (a *app) graphCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Print the block graph as Graphviz dot",
		Long: `graph prints the daemon's block graph (x-debug-query-block-graph) as a
Graphviz dot digraph: block nodes as boxes labelled with name, driver and
ro/rw (roots with a double border, filters dashed, a job's own filter
filled), jobs as hexagons, backends and exports as inverted houses, each
edge labelled with the child's name and the permissions it takes and
shares. The text is sorted, so the same graph prints the same text on
blockd and on qemu-storage-daemon. -o json prints the daemon's reply.`,
		Example: `  blockctl graph > graph.dot && dot -Tsvg graph.dot > graph.svg
  blockctl graph -o json | jq '.edges | length'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var g permGraph
			named, exports, raw, err := a.queryGraph(cmd.Context(), &g)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(raw)
			}
			renderDot(a.stdout, g, named, exports)
			return nil
		},
	}
	return cmd
}

// queryGraph asks the daemon for the graph (x-debug-query-block-graph,
// decoded into g and returned as sent), the nodes
// (query-named-block-nodes, flat) and the exports.
func (a *app) queryGraph(ctx context.Context, g any) ([]namedNode, []blockExport, json.RawMessage, error) {
	var named []namedNode
	var exports []blockExport
	var raw json.RawMessage
	for _, q := range []struct {
		cmd  string
		args any
		into any
	}{
		{"x-debug-query-block-graph", nil, g},
		{"query-named-block-nodes", map[string]any{"flat": true}, &named},
		{"query-block-exports", nil, &exports},
	} {
		ret, err := a.call(ctx, q.cmd, q.args)
		if err != nil {
			return nil, nil, nil, err
		}
		if err := json.Unmarshal(ret, q.into); err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %v", q.cmd, err)
		}
		if raw == nil {
			raw = ret
		}
	}
	return named, exports, raw, nil
}
