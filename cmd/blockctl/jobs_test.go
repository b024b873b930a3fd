package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func jobSpec(t *testing.T, use string) jobCommand {
	t.Helper()
	for _, c := range jobCommands {
		if c.use == use {
			return c
		}
	}
	t.Fatalf("no job command %s", use)
	return jobCommand{}
}

// TestJobArgs: the flags are the QMP arguments, typed as the schema types
// them, and only those given are sent.
func TestJobArgs(t *testing.T) {
	tests := []struct {
		cmd  string
		argv []string
		want string // JSON with sorted keys, or "error: ..."
	}{
		{"stream", []string{"--device", "top"}, `{"device":"top"}`},
		{"stream", []string{"--job-id=s0", "--device", "top", "--base-node", "base", "--speed", "10M", "--on-error", "stop"},
			`{"base-node":"base","device":"top","job-id":"s0","on-error":"stop","speed":10485760}`},
		{"stream", []string{"--device", "top", "--auto-finalize=false", "--auto-dismiss"}, `{"auto-dismiss":true,"auto-finalize":false,"device":"top"}`},
		{"stream", []string{"--device", "top", "--speed", "0x1000"}, `{"device":"top","speed":4096}`},
		{"stream", []string{"--device", "top", "--speed", "-1"}, `{"device":"top","speed":-1}`}, // the daemon's to refuse
		{"stream", []string{"--base-node", "base"}, "error: --device is required"},
		{"stream", []string{"--device", "top", "--speed", "fast"}, `error: invalid argument "fast" for "--speed" flag: not an integer: "fast"`},
		{"stream", []string{"--device", "top", "--target", "x"}, "error: unknown flag: --target"},
		{"commit", []string{"--device", "top", "--top-node", "mid", "--base-node", "base", "--backing-file", "b.qcow2"},
			`{"backing-file":"b.qcow2","base-node":"base","device":"top","top-node":"mid"}`},
		{"mirror", []string{"--device", "top", "--target", "t", "--sync", "full", "--granularity", "64k", "--buf-size", "1M", "--copy-mode", "write-blocking"},
			`{"buf-size":1048576,"copy-mode":"write-blocking","device":"top","granularity":65536,"sync":"full","target":"t"}`},
		{"mirror", []string{"--device", "top", "--target", "t"}, "error: --sync is required"},
		{"backup", []string{"--device", "top", "--target", "t", "--sync", "full", "--compress", "--bitmap-mode", "never"},
			`{"bitmap-mode":"never","compress":true,"device":"top","sync":"full","target":"t"}`},
	}
	for _, tc := range tests {
		t.Run(tc.cmd+" "+strings.Join(tc.argv, " "), func(t *testing.T) {
			spec := jobSpec(t, tc.cmd)
			fs := pflag.NewFlagSet(tc.cmd, pflag.ContinueOnError)
			addJobFlags(fs, spec.args)
			var got map[string]any
			err := fs.Parse(tc.argv)
			if err == nil {
				got, err = jobArgs(fs, spec.args)
			}
			var b []byte
			if got != nil {
				b, _ = json.Marshal(got)
			}
			checkArgs(t, b, err, tc.want)
		})
	}
}

func TestParseInt(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{{"0", 0, true}, {"512", 512, true}, {"64k", 65536, true}, {"64K", 65536, true}, {"10M", 10 << 20, true},
		{"2G", 2 << 30, true}, {"1T", 1 << 40, true}, {"0x10", 16, true}, {"-5", -5, true},
		{"", 0, false}, {"M", 0, false}, {"1.5M", 0, false}, {"9000000T", 0, false}} {
		got, err := parseInt(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseInt(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestRateAndETA(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var m rateMeter
	if m.add(t0, 0); m.rate() != 0 {
		t.Errorf("rate of one sample: %v", m.rate())
	}
	for i := 1; i <= 10; i++ {
		m.add(t0.Add(time.Duration(i)*time.Second), int64(i)<<20) // 1 MiB/s
	}
	if r := m.rate(); r != 1<<20 {
		t.Errorf("rate = %v, want 1 MiB/s", r)
	}
	if len(m.samples) > 7 {
		t.Errorf("samples older than the window kept: %d", len(m.samples))
	}
	m.add(t0.Add(11*time.Second), 1<<20) // went back: a new pass
	if m.rate() != 0 {
		t.Errorf("rate after progress went back: %v", m.rate())
	}
	for _, tc := range []struct {
		cur, total int64
		rate       float64
		want       time.Duration
	}{{0, 100 << 20, 10 << 20, 10 * time.Second}, {50, 100, 0, -1}, {100, 100, 5, -1}, {0, 3 << 20, 2 << 20, 2 * time.Second}} {
		if got := eta(tc.cur, tc.total, tc.rate); got != tc.want {
			t.Errorf("eta(%d, %d, %v) = %v, want %v", tc.cur, tc.total, tc.rate, got, tc.want)
		}
	}
}

func TestProgressLine(t *testing.T) {
	for _, tc := range []struct {
		st   jobState
		want string
	}{
		{jobState{Status: "created", ETA: -1}, "s0 stream: created"},
		{jobState{Status: "running", Cur: 16 << 20, Total: 64 << 20, Rate: 12.5 * (1 << 20), ETA: 4 * time.Second},
			"s0 stream: running 25.0% (16 MiB of 64 MiB) 12.5 MiB/s ETA 4s"},
		{jobState{Status: "running", Cur: 0, Total: 64 << 20, ETA: -1}, "s0 stream: running 0.0% (0 B of 64 MiB) 0.0 MiB/s ETA -"},
		{jobState{Status: "completed", Cur: 64 << 20, Total: 64 << 20}, "s0 stream: completed 100.0% (64 MiB of 64 MiB)"},
	} {
		if got := progressLine("s0", "stream", tc.st); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

func TestFormatEvent(t *testing.T) {
	e := Event{Event: "BLOCK_JOB_COMPLETED", Data: map[string]any{"device": "s0", "len": float64(67108864), "offset": float64(0),
		"error": "Input/output error", "type": "stream"}}
	e.Timestamp.Seconds, e.Timestamp.Microseconds = 3723, 42
	got := formatEvent(e)
	want := ` BLOCK_JOB_COMPLETED device=s0 error="Input/output error" len=67108864 offset=0 type=stream`
	if !strings.HasSuffix(got, want) || !strings.Contains(got, ".000042 ") {
		t.Errorf("got  %q\nwant ...%q", got, want)
	}
}
