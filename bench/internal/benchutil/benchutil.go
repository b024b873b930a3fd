// Package benchutil holds what the side-by-side benchmarks share: running
// tools, reading a daemon's CPU time and memory from /proc, medians.
package benchutil

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
)

// Check panics on an error: a benchmark that cannot do a step has no
// figure to give.
func Check(err error) {
	if err != nil {
		panic(err)
	}
}

// MustRun runs a tool with its stderr shown and panics if it fails.
func MustRun(name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		panic(fmt.Sprintf("%s %v: %v", name, args, err))
	}
}

// Median is the median of v (the upper one of an even count).
func Median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// CPUSeconds is the user+system CPU time of a process so far.
func CPUSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	Check(err)
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// PeakRSS is a process's peak resident set size so far (VmHWM), in MiB.
func PeakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	Check(err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			Check(err)
			return kb / 1024
		}
	}
	panic("no VmHWM in /proc/" + strconv.Itoa(pid) + "/status")
}
