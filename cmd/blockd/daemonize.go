package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Go cannot fork, so --daemonize re-executes blockd in a new session with
// its standard streams on /dev/null and waits on a pipe until the child
// says it is set up (or why it failed); then the parent exits, as qsd's
// parent does.
const daemonEnv = "BLOCKD_DAEMON_READY_FD"

func parentOfDaemon(argv []string, stderr io.Writer) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "blockd: --daemonize: %v\n", err)
		return 1
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "blockd: --daemonize: %v\n", err)
		return 1
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintf(stderr, "blockd: --daemonize: %v\n", err)
		return 1
	}
	cmd := exec.Command(exe, argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(os.Environ(), daemonEnv+"=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "blockd: --daemonize: %v\n", err)
		return 1
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "ok" {
		return 0
	}
	if line == "" {
		line = "the daemon exited during start-up"
	}
	fmt.Fprintf(stderr, "blockd: %s\n", line)
	return 1
}

// reportReady tells a waiting parent that set-up finished, and detaches.
func reportReady(setupErr error) {
	if os.Getenv(daemonEnv) == "" {
		return
	}
	f := os.NewFile(3, "ready")
	if f == nil {
		return
	}
	defer f.Close()
	if setupErr != nil {
		fmt.Fprintf(f, "%s\n", strings.ReplaceAll(setupErr.Error(), "\n", " "))
		return
	}
	fmt.Fprintln(f, "ok")
	os.Unsetenv(daemonEnv)
}
