package block

import "testing"

// TestHasProtocolPrefix: every name QEMU would read as a protocol or a
// json: pseudo-filename is caught, and no path is.
func TestHasProtocolPrefix(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{`json:{"driver":"file","filename":"/etc/passwd"}`, true},
		{"nbd://127.0.0.1:10809/x", true},
		{"nbd:127.0.0.1:10809", true},
		{"nbd:unix:/tmp/s", true},
		{"ssh:host", true},
		{"file:/etc/passwd", true},
		{"null-co://", true},
		{"weird:name", true},
		{":x", true},
		{"/abs/a:b", false},
		{"dir/nbd:x", false},
		{"./a:b", false},
		{"base.qcow2", false},
		{"", false},
	} {
		if got := HasProtocolPrefix(tc.name); got != tc.want {
			t.Errorf("HasProtocolPrefix(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
