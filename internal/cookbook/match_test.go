package cookbook

import "testing"

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, got string
		ok           bool
	}{
		{`{"return": {}}`, `{"return": {}}`, true},
		{`{"return": {}}`, `{"return": {"x": 1}}`, false},
		{`{"a": "...", "b": 2}`, `{"a": [1, 2], "b": 2}`, true},
		{`{"a": 1, "...": "..."}`, `{"a": 1, "b": 2}`, true},
		{`{"a": 1, "...": "..."}`, `{"b": 2}`, false},
		{`[1, "..."]`, `[1, 2, 3]`, true},
		{`[1, "..."]`, `[]`, false},
		{`[1, 2]`, `[1, 2, 3]`, false},
		{`{"error": {"class": "GenericError", "desc": "x"}}`, `{"error": {"class": "GenericError", "desc": "y"}}`, false},
	}
	for _, tt := range tests {
		err := MatchJSON([]byte(tt.pattern), []byte(tt.got))
		if (err == nil) != tt.ok {
			t.Errorf("Match(%s, %s) = %v, want ok=%v", tt.pattern, tt.got, err, tt.ok)
		}
	}
}

func TestParse(t *testing.T) {
	f, err := Parse("x", "## T\n-> {}\n<- {}\n$ ls\n% blockctl nodes\n= graph g Caption here\nprose")
	if err != nil {
		t.Fatal(err)
	}
	want := []Kind{Prose, Send, Expect, Shell, Blockctl, Graph, Prose}
	for i, l := range f.Lines {
		if l.Kind != want[i] {
			t.Errorf("line %d: kind %d, want %d", i+1, l.Kind, want[i])
		}
	}
	if g := f.Lines[5]; g.GraphName() != "g" || g.GraphCaption() != "Caption here" || f.GraphFile("g") != "x.g.dot" {
		t.Errorf("graph line: %q %q", g.GraphName(), g.GraphCaption())
	}
	if _, err := Parse("y", "no title"); err == nil {
		t.Error("a flow without a title parsed")
	}
}
