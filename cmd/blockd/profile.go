package main

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

// profileEnv names a file for a CPU profile of the whole run (for
// `go tool pprof`); "%p" in it becomes the PID, so that several daemons
// started with the same environment (a benchmark's source and
// destination) write apart. Off unless set: a developer's tool, not an
// option qsd has.
const profileEnv = "BLOCKD_CPUPROFILE"

// startProfile starts the CPU profile profileEnv asks for and returns
// what stops it; it reports a failure and carries on without one.
func startProfile(stderr io.Writer) (stop func()) {
	path := os.Getenv(profileEnv)
	if path == "" {
		return func() {}
	}
	path = strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid()))
	f, err := os.Create(path)
	if err == nil {
		if err = pprof.StartCPUProfile(f); err != nil {
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "blockd: %s: %v\n", profileEnv, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
