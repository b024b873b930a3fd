package qcow2

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
)

// The crash test runs a child process (this test binary, TestCrashChild)
// that writes into an image in a loop and logs every request before it
// issues it ("W off len seed", "C off len seed" for compressed data,
// "Z off len", "D off len") and every
// completed flush ("F"). The parent kills it with SIGKILL at a random
// moment, checks the image with qemu-img (leaks allowed), and verifies
// that every byte written before the last logged flush reads back; bytes
// of requests after it may hold either version. Then it starts the next
// round on the same image.

const (
	crashImageEnv  = "QCOW2_CRASH_IMAGE"
	crashLogEnv    = "QCOW2_CRASH_LOG"
	crashSeedEnv   = "QCOW2_CRASH_SEED"
	crashOptsEnv   = "QCOW2_CRASH_OPTS"
	crashRoundsEnv = "QCOW2_CRASH_ROUNDS"
)

func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashImageEnv)
	if path == "" {
		t.Skip("only run as the child of TestCrash")
	}
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	var extra map[string]any
	if s := os.Getenv(crashOptsEnv); s != "" {
		if err := json.Unmarshal([]byte(s), &extra); err != nil {
			t.Fatal(err)
		}
	}
	log, err := os.OpenFile(os.Getenv(crashLogEnv), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	g := newGraph()
	n, r := openImage(t, g, "q", path, extra)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 3))
	size := r.Size()
	cs := n.Caps().Limits.OptimalTransfer
	logf := func(format string, a ...any) {
		if _, err := fmt.Fprintf(log, format+"\n", a...); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		off := rng.Int64N(size)
		l := min(1+rng.Int64N(256<<10), size-off)
		if rng.IntN(2) == 0 {
			off &^= 4095
			l = min((l+4095)&^4095, size-off)
		}
		switch op := rng.IntN(20); {
		case op < 2:
			// Compressed clusters go only where no data is: zero the
			// range first (with unmap, which drops the host clusters).
			off &^= cs - 1
			l = min(cs*(1+rng.Int64N(4)), size-off)
			s := rng.Uint64()
			logf("Z %d %d", off, l)
			if err := r.Zero(ctx, off, l, block.FlagMayUnmap); err != nil {
				t.Fatal(err)
			}
			logf("C %d %d %d", off, l, s)
			if err := r.WriteAt(ctx, compressible(s, int(l)), off, block.FlagCompressed); err != nil {
				t.Fatal(err)
			}
		case op < 15:
			s := rng.Uint64()
			logf("W %d %d %d", off, l, s)
			if err := r.WriteAt(ctx, pattern(s, int(l)), off, 0); err != nil {
				t.Fatal(err)
			}
		case op < 17:
			logf("Z %d %d", off, l)
			if err := r.Zero(ctx, off, l, block.FlagMayUnmap); err != nil {
				t.Fatal(err)
			}
		case op < 18:
			logf("D %d %d", off, l)
			if err := r.Discard(ctx, off, l); err != nil {
				t.Fatal(err)
			}
		default:
			if err := r.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			logf("F")
		}
	}
}

type crashOp struct {
	kind   byte
	off, n int64
	seed   uint64
}

func readCrashLog(t *testing.T, path string) (committed, maybe []crashOp) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil // killed before it started
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ops []crashOp
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 {
			continue
		}
		if fs[0] == "F" {
			committed = append(committed, ops...)
			ops = nil
			continue
		}
		if len(fs) < 3 {
			continue // a torn last line
		}
		var op crashOp
		op.kind = fs[0][0]
		op.off, _ = strconv.ParseInt(fs[1], 10, 64)
		op.n, _ = strconv.ParseInt(fs[2], 10, 64)
		if op.kind == 'W' || op.kind == 'C' {
			if len(fs) < 4 {
				op.n = -1 // torn: treat the whole rest as unknown below
			} else {
				op.seed, _ = strconv.ParseUint(fs[3], 10, 64)
			}
		}
		ops = append(ops, op)
	}
	return committed, ops
}

// TestCrash kills a writing child process at random moments and checks
// that the image stays consistent and keeps every flushed write.
func TestCrash(t *testing.T) {
	rounds := 3
	if s := os.Getenv(crashRoundsEnv); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	for _, tc := range []struct {
		name  string
		opts  CreateOptions
		extra map[string]any
	}{
		{name: "small-cache", opts: CreateOptions{ClusterSize: ptr(uint64(4096))},
			extra: map[string]any{"l2-cache-size": 16384, "l2-cache-entry-size": 1024, "refcount-cache-size": 16384}},
		{name: "lazy", opts: CreateOptions{LazyRefcounts: ptr(true), ClusterSize: ptr(uint64(16384))}},
		{name: "extl2-rb8", opts: CreateOptions{ExtendedL2: ptr(true), RefcountBits: ptr(int64(8))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			img := filepath.Join(dir, "img.qcow2")
			opts := tc.opts
			opts.Size = 48 << 20
			createImage(t, img, opts)
			cluster := int64(65536)
			if opts.ClusterSize != nil {
				cluster = int64(*opts.ClusterSize)
			}
			extraJSON, _ := json.Marshal(tc.extra)
			base := make([]byte, opts.Size)
			rng := rand.New(rand.NewPCG(uint64(len(tc.name)), uint64(time.Now().UnixNano())))
			for round := 0; round < rounds; round++ {
				logPath := filepath.Join(dir, fmt.Sprintf("log%d", round))
				cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
				cmd.Env = append(os.Environ(),
					crashImageEnv+"="+img, crashLogEnv+"="+logPath,
					crashSeedEnv+"="+strconv.FormatUint(rng.Uint64(), 10),
					crashOptsEnv+"="+string(extraJSON))
				out, err := os.Create(filepath.Join(dir, fmt.Sprintf("out%d", round)))
				if err != nil {
					t.Fatal(err)
				}
				cmd.Stdout, cmd.Stderr = out, out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Duration(150+rng.IntN(600)) * time.Millisecond)
				_ = cmd.Process.Signal(syscall.SIGKILL)
				_ = cmd.Wait()
				out.Close()
				if b, _ := os.ReadFile(out.Name()); strings.Contains(string(b), "FAIL") {
					t.Fatalf("child failed:\n%s", b)
				}
				committed, maybe := readCrashLog(t, logPath)
				if opts.LazyRefcounts != nil && *opts.LazyRefcounts {
					// Refcounts of a dirty lazy image are repaired on open.
					g := newGraph()
					_, r := openImage(t, g, "q", img, nil)
					closeImage(t, g, r, "q")
				}
				qemuCheck(t, img, true)
				got := rawContents(t, img)
				want := append([]byte(nil), base...)
				m := &model{data: want, cluster: cluster, discardZeroes: true}
				for _, op := range committed {
					applyCrashOp(m, op)
				}
				unknown := make([]bool, len(want))
				for _, op := range maybe {
					end := op.off + op.n
					if op.n < 0 || end > int64(len(want)) {
						end = int64(len(want))
					}
					for i := op.off; i < end; i++ {
						unknown[i] = true
					}
				}
				for i := range want {
					if !unknown[i] && got[i] != want[i] {
						t.Fatalf("round %d: byte %#x reads %#x, flushed %#x (%d committed, %d pending ops)", round, i, got[i], want[i], len(committed), len(maybe))
					}
				}
				t.Logf("round %d: %d committed, %d pending requests", round, len(committed), len(maybe))
				base = got
			}
		})
	}
}

func applyCrashOp(m *model, op crashOp) {
	switch op.kind {
	case 'W':
		m.write(op.off, pattern(op.seed, int(op.n)))
	case 'C':
		m.write(op.off, compressible(op.seed, int(op.n)))
	case 'Z':
		m.zero(op.off, op.n)
	case 'D':
		m.discard(op.off, op.n)
	}
}
