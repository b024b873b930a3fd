package blockdev

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/qmp"
)

// ImageInfo is QMP's ImageInfo.
type ImageInfo struct {
	Filename              string         `json:"filename"`
	Format                string         `json:"format"`
	VirtualSize           int64          `json:"virtual-size"`
	ActualSize            *int64         `json:"actual-size,omitempty"`
	DirtyFlag             *bool          `json:"dirty-flag,omitempty"`
	ClusterSize           int64          `json:"cluster-size,omitempty"`
	BackingFilename       string         `json:"backing-filename,omitempty"`
	FullBackingFilename   string         `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string         `json:"backing-filename-format,omitempty"`
	Snapshots             []SnapshotInfo `json:"snapshots,omitempty"`
	BackingImage          *ImageInfo     `json:"backing-image,omitempty"`
	FormatSpecific        map[string]any `json:"format-specific,omitempty"`
}

// BlockDeviceInfo is QMP's BlockDeviceInfo (query-named-block-nodes).
type BlockDeviceInfo struct {
	File             string           `json:"file"`
	NodeName         string           `json:"node-name"`
	RO               bool             `json:"ro"`
	Drv              string           `json:"drv"`
	BackingFile      string           `json:"backing_file,omitempty"`
	BackingFileDepth int              `json:"backing_file_depth"`
	Encrypted        bool             `json:"encrypted"`
	DetectZeroes     string           `json:"detect_zeroes"`
	Bps              int64            `json:"bps"`
	BpsRd            int64            `json:"bps_rd"`
	BpsWr            int64            `json:"bps_wr"`
	Iops             int64            `json:"iops"`
	IopsRd           int64            `json:"iops_rd"`
	IopsWr           int64            `json:"iops_wr"`
	Image            *ImageInfo       `json:"image"`
	Cache            cacheInfo        `json:"cache"`
	WriteThreshold   int64            `json:"write_threshold"`
	DirtyBitmaps     []BlockDirtyInfo `json:"dirty-bitmaps,omitempty"`
}

type cacheInfo struct {
	Writeback bool `json:"writeback"`
	Direct    bool `json:"direct"`
	NoFlush   bool `json:"no-flush"`
}

type namedNodesArgs struct {
	Flat *bool `json:"flat,omitempty"`
}

func (s *Server) queryNamedBlockNodes(ctx context.Context, a *namedNodesArgs) ([]BlockDeviceInfo, error) {
	s.G.Lock()
	defer s.G.Unlock()
	flat := a.Flat != nil && *a.Flat
	out := []BlockDeviceInfo{}
	for _, n := range s.G.Nodes() {
		out = append(out, deviceInfo(ctx, n, flat))
	}
	return out, nil
}

func deviceInfo(ctx context.Context, n *block.Node, flat bool) BlockDeviceInfo {
	c := n.Common()
	d := BlockDeviceInfo{
		File:           Filename(n),
		NodeName:       n.Name(),
		RO:             n.ReadOnly(),
		Drv:            n.Driver().Name,
		DetectZeroes:   "off",
		Image:          imageInfo(ctx, n, !flat),
		Cache:          cacheInfo{Writeback: true, Direct: c.Direct(), NoFlush: c.NoFlush()},
		WriteThreshold: int64(n.WriteThreshold()), // compat(qsd-7.2): an int, so 2^64-1 reads -1
		DirtyBitmaps:   dirtyBitmaps(n),
	}
	if c.DetectZeroes != "" {
		d.DetectZeroes = string(c.DetectZeroes)
	}
	if b := block.COWChild(n); b != nil {
		d.BackingFile = Filename(b.Node())
	} else if bf, ok := n.Impl().(block.BackingFiler); ok {
		if name, _ := bf.BackingFile(); name != "" {
			d.BackingFile = block.ResolveBacking(Filename(n), name)
		}
	}
	if !flat {
		// Every link of the chain counts, filters included, as in QEMU.
		for c := block.FilteredOrCOWChild(n); c != nil; c = block.FilteredOrCOWChild(c.Node()) {
			d.BackingFileDepth++
		}
	}
	return d
}

func imageInfo(ctx context.Context, n *block.Node, nested bool) *ImageInfo {
	i := &ImageInfo{
		Filename:    Filename(n),
		Format:      n.Driver().Name,
		VirtualSize: n.Size(),
		ActualSize:  actualSize(n),
		DirtyFlag:   dirtyFlag(ctx, n),
		Snapshots:   nodeSnapshots(ctx, n),
	}
	if inf, ok := n.Impl().(block.Infoer); ok {
		x := inf.ImageInfo(ctx)
		i.ClusterSize = x.ClusterSize
		i.FormatSpecific = x.FormatSpecific
		if x.ActualSize != nil {
			i.ActualSize = x.ActualSize
		}
	} else {
		i.ClusterSize = block.ClusterSize(ctx, n)
	}
	if bf, ok := n.Impl().(block.BackingFiler); ok {
		name, format := bf.BackingFile()
		if name != "" {
			i.BackingFilename = name
			i.FullBackingFilename = block.ResolveBacking(storageFilename(n), name)
			i.BackingFilenameFormat = format
		}
	}
	if nested {
		// The chain below, filters included (qsd lists a throttle node
		// between two images), but not the filters jobs insert.
		if b := block.FilteredOrCOWChild(n); b != nil {
			i.BackingImage = imageInfo(ctx, block.SkipImplicitFilters(b.Node()), true)
		}
	}
	return i
}

// storageFilename is the file name of the protocol node below n.
func storageFilename(n *block.Node) string {
	for x := n; x != nil; {
		if _, ok := x.Impl().(block.Filenamer); ok {
			return x.Filename()
		}
		c := block.StorageChild(x)
		if c == nil {
			break
		}
		x = c.Node()
	}
	return ""
}

// actualSize follows QEMU: protocol drivers say it themselves (or not),
// filters report their child's, formats the sum of their children's.
func actualSize(n *block.Node) *int64 {
	if as, ok := n.Impl().(block.AllocatedSizer); ok {
		v, err := as.AllocatedSize()
		if err != nil {
			return nil
		}
		return &v
	}
	switch {
	case n.Driver().Kind == block.KindProtocol:
		return nil
	case n.IsFilter():
		if c := block.FilteredChild(n); c != nil {
			return actualSize(c.Node())
		}
		return nil
	}
	var sum int64
	for _, c := range n.Children() {
		if c.Role()&block.RoleCOW != 0 {
			continue
		}
		v := actualSize(c.Node())
		if v == nil {
			return nil
		}
		sum += *v
	}
	return &sum
}

// dirtyFlag is reported by drivers that know it; formats without header
// state and filters report their storage's, files always have one.
func dirtyFlag(ctx context.Context, n *block.Node) *bool {
	if inf, ok := n.Impl().(block.Infoer); ok {
		if d := inf.ImageInfo(ctx).DirtyFlag; d != nil {
			return d
		}
	}
	if n.Driver().Kind == block.KindProtocol {
		return nil
	}
	// A format without a header of its own (raw) and a filter say what
	// the node below says, as QEMU's bdrv_get_info passes through them.
	if c := block.PrimaryChild(n); c != nil {
		return dirtyFlag(ctx, c.Node())
	}
	return nil
}

// plainKeys are options that do not stop a node from being described by
// its file's name.
var plainKeys = map[string]bool{
	"driver": true, "node-name": true, "file": true, "read-only": true, "cache": true,
	"discard": true, "detect-zeroes": true, "auto-read-only": true, "force-share": true,
}

// Filename is the name QMP reports for a node: the protocol's own name, a
// format's or filter's file name when its options add nothing to it, and
// otherwise a json: pseudo-filename of its options, as QEMU builds it.
func Filename(n *block.Node) string {
	if f, ok := n.Impl().(block.Filenamer); ok && f.Filename() != "" {
		return f.Filename()
	}
	if n.IsFilter() || !isPlain(n) {
		s, err := qmp.FormatJSON(fullOptions(n))
		if err != nil {
			return "json:{}"
		}
		return "json:" + s
	}
	if c := block.PrimaryChild(n); c != nil {
		return Filename(c.Node())
	}
	return ""
}

func isPlain(n *block.Node) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(n.RawOptions(), &m) != nil {
		return false
	}
	for k := range m {
		if !plainKeys[k] {
			return false
		}
	}
	return true
}

// fullOptions describes a node by its driver options and its children's,
// without node names and runtime-only options.
func fullOptions(n *block.Node) map[string]any {
	m := map[string]any{}
	var raw map[string]any
	_ = json.Unmarshal(n.RawOptions(), &raw)
	for k, v := range raw {
		switch k {
		case "node-name", "read-only", "cache", "discard", "detect-zeroes", "auto-read-only", "force-share":
			continue
		}
		m[k] = v
	}
	m["driver"] = n.Driver().Name
	var children []any
	for _, c := range n.Children() {
		name := c.Name()
		if strings.HasPrefix(name, "children.") {
			// A quorum's children, as they are now (x-blockdev-change
			// adds and removes them), in order.
			children = append(children, fullOptions(c.Node()))
			continue
		}
		m[name] = fullOptions(c.Node())
	}
	if children != nil {
		m["children"] = children
	}
	return m
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte("{}")
	}
	return b
}

// BlockInfo is QMP's BlockInfo (query-block).
type BlockInfo struct {
	Device    string           `json:"device"`
	Qdev      *string          `json:"qdev,omitempty"` // a guest device's id: exports have none
	Type      string           `json:"type"`
	Removable bool             `json:"removable"`
	Locked    bool             `json:"locked"`
	Inserted  *BlockDeviceInfo `json:"inserted,omitempty"`
	TrayOpen  *bool            `json:"tray_open,omitempty"` // only removable media have a tray
	IOStatus  *string          `json:"io-status,omitempty"` // only guest devices enable it
}

// queryBlock lists every export's backend as a device named by the
// export's id. compat(qsd-7.2): qsd answers [] (an export's backend is
// anonymous, so a client cannot see what each export serves); blockd
// fills in what qsd would report for a named backend, in the order the
// exports were added.
func (s *Server) queryBlock(ctx context.Context, a *struct{}) ([]BlockInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.G.Lock()
	defer s.G.Unlock()
	out := []BlockInfo{}
	for _, e := range s.exports.exports {
		// The node the export serves, not a filter a job put above it.
		n := block.SkipImplicitFilters(e.root.Node())
		info := deviceInfo(ctx, n, false)
		info.Cache.Writeback = !e.writethrough
		// A backend's chain skips implicit filters at every link.
		info.BackingFileDepth = 0
		for x := n; block.FilteredOrCOWChild(x) != nil; {
			info.BackingFileDepth++
			x = block.SkipImplicitFilters(block.FilteredOrCOWChild(x).Node())
		}
		out = append(out, BlockInfo{Device: e.id, Type: "unknown", Inserted: &info})
	}
	return out, nil
}

// graph query

type graphNode struct {
	ID   int    `json:"id"`
	Type string `json:"type"`
	Name string `json:"name"`
}

type graphEdge struct {
	Parent     int      `json:"parent"`
	Child      int      `json:"child"`
	Name       string   `json:"name"`
	Perm       []string `json:"perm"`
	SharedPerm []string `json:"shared-perm"`
}

type blockGraph struct {
	Nodes []graphNode `json:"nodes"`
	Edges []graphEdge `json:"edges"`
}

func (s *Server) queryBlockGraph(ctx context.Context, a *struct{}) (blockGraph, error) {
	s.G.Lock()
	defer s.G.Unlock()
	// qsd numbers nodes oldest first, lists them newest first, and lists
	// each node's edges to its children in their order, newest parent
	// first; users outside the graph (exports) come after.
	nodes := s.G.Nodes()
	ids := map[block.Parent]int{}
	for i := len(nodes) - 1; i >= 0; i-- {
		ids[nodes[i]] = len(ids) + 1
	}
	g := blockGraph{Nodes: []graphNode{}, Edges: []graphEdge{}}
	for _, n := range nodes {
		g.Nodes = append(g.Nodes, graphNode{ID: ids[n], Type: "block-driver", Name: n.Name()})
	}
	edge := func(c *block.Child, parent int) {
		perm, shared := c.Perm()
		g.Edges = append(g.Edges, graphEdge{Parent: parent, Child: ids[c.Node()], Name: c.Name(), Perm: perm.Names(), SharedPerm: shared.Names()})
	}
	for _, n := range nodes {
		for _, c := range n.Children() {
			edge(c, ids[n])
		}
	}
	for i := len(nodes) - 1; i >= 0; i-- {
		for _, c := range nodes[i].Parents() {
			p := c.Parent()
			if _, isNode := p.(*block.Node); isNode {
				continue
			}
			id, ok := ids[p]
			if !ok {
				id = len(ids) + 1
				ids[p] = id
				kind, name := p.ParentInfo()
				g.Nodes = append(g.Nodes, graphNode{ID: id, Type: kind, Name: name})
			}
			edge(c, id)
		}
	}
	return g, nil
}
