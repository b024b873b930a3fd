package nbd_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// fileBackend serves a file with pread/pwrite, for performance runs.
type fileBackend struct{ f *os.File }

func (b fileBackend) Size() int64 {
	fi, _ := b.f.Stat()
	return fi.Size()
}
func (b fileBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	_, err := b.f.ReadAt(p, off)
	return err
}
func (b fileBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	_, err := b.f.WriteAt(p, off)
	return err
}
func (b fileBackend) Zero(ctx context.Context, off, n int64, mayTrim, fua, fast bool) error {
	return nbd.ErrNotSupported
}
func (b fileBackend) Trim(ctx context.Context, off, n int64, fua bool) error { return nil }
func (b fileBackend) Flush(ctx context.Context) error                        { return b.f.Sync() }
func (b fileBackend) Cache(ctx context.Context, off, n int64) error          { return nil }
func (b fileBackend) BlockStatus(ctx context.Context, off, n int64) ([]nbd.Extent, error) {
	return []nbd.Extent{{Length: n, Depth: 1}}, nil
}

// TestFioProfile runs fio 4 KiB random reads at queue depth 16 against a
// file export and reports the server's CPU time per GiB, writing a CPU
// profile to $NBD_PROFILE. Opt-in: set NBD_PROFILE=path.
func TestFioProfile(t *testing.T) {
	out := os.Getenv("NBD_PROFILE")
	if out == "" {
		t.Skip("set NBD_PROFILE=cpu.out to run")
	}
	tool(t, "fio")
	s := startServer(t, nbd.ServerOptions{})
	path := filepath.Join(t.TempDir(), "disk")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for i := 0; i < 256; i++ {
		f.Write(buf)
	}
	addExport(t, s, fileBackend{f}, nbd.ExportOptions{Name: "disk"})
	var r0, r1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	if out != "none" {
		pf, _ := os.Create(out)
		pprof.StartCPUProfile(pf)
	}
	if os.Getenv("NBD_PROFILE_SEQ") != "" {
		start := time.Now()
		for i := 0; i < 4; i++ {
			run(t, "nbdcopy", s.uri("disk"), "null:")
		}
		pprof.StopCPUProfile()
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
		t.Logf("nbdcopy 1 GiB in %v, server CPU %v (user %v), %.2f voluntary context switches per MiB", time.Since(start), cpu,
			time.Duration(r1.Utime.Nano()-r0.Utime.Nano()), float64(r1.Nvcsw-r0.Nvcsw)/1024)
		return
	}
	res := run(t, "fio", "--name=r", "--ioengine=nbd", "--uri="+s.uri("disk"), "--rw=randread", "--bs=4k",
		"--iodepth=16", "--runtime=5", "--time_based", "--size=256M", "--output-format=terse", "--terse-version=3")
	pprof.StopCPUProfile()
	syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	fields := strings.Split(res, ";")
	cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
	kib, _ := strconv.ParseFloat(fields[5], 64)
	ios := kib / 4
	t.Logf("IOPS %s, server CPU %v (user %v), %.2f s/GiB, %.2f voluntary context switches per I/O", fields[7], cpu,
		time.Duration(r1.Utime.Nano()-r0.Utime.Nano()), cpu.Seconds()/(kib/(1<<20)), float64(r1.Nvcsw-r0.Nvcsw)/ios)
}

// BenchmarkRead4K measures 4 KiB reads at queue depth 16 over a UNIX
// socket, with a client that allocates nothing per request, so that
// allocs/op is the server's.
func BenchmarkRead4K(b *testing.B) {
	for _, structured := range []bool{false, true} {
		b.Run(map[bool]string{false: "simple", true: "structured"}[structured], func(b *testing.B) {
			s := startServer(b, nbd.ServerOptions{})
			m := nbdtest.NewMem(64*MiB, 0)
			m.WriteAt(context.Background(), make([]byte, 64*MiB), 0, false)
			addExport(b, s, m, nbd.ExportOptions{Name: "e"})
			c, _ := s.connect(b, "e", structured)
			c.nc.SetDeadline(time.Time{})
			reqs := make([][]byte, 16)
			for i := range reqs {
				reqs[i] = req(cmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
			}
			replyLen := 16 + 4096
			if structured {
				replyLen = 20 + 8 + 4096
			}
			reply := make([]byte, replyLen)
			b.SetBytes(4096)
			b.ReportAllocs()
			b.ResetTimer()
			inflight := 0
			for i := 0; i < b.N; i++ {
				for inflight < 16 && i+inflight < b.N {
					c.nc.Write(reqs[(i+inflight)%16])
					inflight++
				}
				if _, err := io.ReadFull(c.br, reply); err != nil {
					b.Fatal(err)
				}
				inflight--
			}
		})
	}
}
