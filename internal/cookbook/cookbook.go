// Package cookbook reads the cookbook's flows: the files an iotest runs
// against blockd and qsd, and cmd/cookbook renders into
// docs/cookbook.md, so that the document shows only what was run.
//
// A flow file is lines, each of one kind by its prefix:
//
//	-> {"execute": ...}        a QMP command, sent as written
//	<- {"return": ...}         the reply it must get (a pattern)
//	<- {"event": ..., "data"}  an event that must come (a pattern)
//	$ qemu-img ...             a shell command both tracks run
//	% blockctl ...             a shell command only the blockctl track runs
//	= graph NAME caption       the graph now, as blockctl graph prints it
//	anything else              Markdown prose
//
// A test runs each flow twice, on a fresh daemon each time: the QMP
// track runs the ->, <-, $ and = lines, the blockctl track the $ and %
// lines. $DIR in any line is the directory of the images.
package cookbook

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Kind is what a line of a flow is.
type Kind int

const (
	Prose    Kind = iota
	Send          // "-> " a QMP command
	Expect        // "<- " a reply or event pattern
	Shell         // "$ " a command for both tracks
	Blockctl      // "% " a command for the blockctl track
	Graph         // "= graph NAME caption"
)

var prefixes = []struct {
	prefix string
	kind   Kind
}{{"-> ", Send}, {"<- ", Expect}, {"$ ", Shell}, {"% ", Blockctl}, {"= graph ", Graph}}

// Line is one line of a flow, without its prefix.
type Line struct {
	Kind Kind
	Text string
	Num  int // 1-based, for messages
}

// Raw is the line as written, with its prefix.
func (l Line) Raw() string {
	for _, p := range prefixes {
		if p.kind == l.Kind {
			return p.prefix + l.Text
		}
	}
	return l.Text
}

// GraphName and GraphCaption split a Graph line's text.
func (l Line) GraphName() string             { n, _, _ := strings.Cut(l.Text, " "); return n }
func (l Line) GraphCaption() string          { _, c, _ := strings.Cut(l.Text, " "); return c }
func (l Line) Where(f *Flow) string          { return fmt.Sprintf("%s:%d", f.Name, l.Num) }
func (f *Flow) GraphFile(name string) string { return f.Name + "." + name + ".dot" }

// Flow is one file: its name (the file name without .txt), its title
// (the first line, a "## " heading) and its lines.
type Flow struct {
	Name  string
	Title string
	Lines []Line
}

// Parse reads one flow.
func Parse(name, text string) (*Flow, error) {
	f := &Flow{Name: name}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		l := Line{Kind: Prose, Text: sc.Text(), Num: n}
		for _, p := range prefixes {
			if rest, ok := strings.CutPrefix(l.Text, p.prefix); ok {
				l.Kind, l.Text = p.kind, rest
				break
			}
		}
		if l.Kind == Graph && l.GraphName() == "" {
			return nil, fmt.Errorf("%s:%d: a graph needs a name", name, n)
		}
		f.Lines = append(f.Lines, l)
	}
	if len(f.Lines) == 0 || !strings.HasPrefix(f.Lines[0].Text, "## ") {
		return nil, fmt.Errorf("%s: the first line must be the title, a '## ' heading", name)
	}
	f.Title = strings.TrimPrefix(f.Lines[0].Text, "## ")
	return f, sc.Err()
}

// Load reads every NN-name.txt flow in dir, in the order of their names.
func Load(dir string) ([]*Flow, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var flows []*Flow
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		f, err := Parse(strings.TrimSuffix(filepath.Base(p), ".txt"), string(b))
		if err != nil {
			return nil, err
		}
		flows = append(flows, f)
	}
	if len(flows) == 0 {
		return nil, fmt.Errorf("no flows (*.txt) in %s", dir)
	}
	return flows, nil
}
