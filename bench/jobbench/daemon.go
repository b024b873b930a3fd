package main

import (
	"os"
	"os/exec"
	"path/filepath"

	"github.com/blockd/blockd/bench/internal/benchutil"
)

type daemon = benchutil.Daemon

func startDaemon(name, dir string) *daemon {
	sock := filepath.Join(dir, name+"-qmp.sock")
	os.Remove(sock)
	bin := *blockdBin
	var args []string
	if name == "qsd" {
		bin = "qemu-storage-daemon"
	} else {
		args = append(args, "--log-level", "warn")
	}
	args = append(args,
		"--chardev", "socket,id=m0,path="+sock+",server=on,wait=off",
		"--monitor", "chardev=m0")
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if name == "qsd" && *qsdHeap {
		// qsd copies through 512 KiB bounce buffers; when glibc hands
		// them out as fresh mmaps every copy faults in its pages (one
		// fault per 4 KiB), which made qsd 6-9x slower in some runs and
		// not in others. A fixed mmap threshold above that size keeps
		// them on the heap: qsd's best case, every run.
		cmd.Env = append(os.Environ(), "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=1073741824")
	}
	benchutil.Check(cmd.Start())
	return benchutil.Connect(name, cmd, sock)
}
