package fuse

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
)

// memBackend is a node in memory whose allocation is tracked per 4 KiB
// block, so that lseek and punch-hole have something to see.
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	alloc   map[int64]bool // 4 KiB block index -> holds data
	flushes int
}

const memBlock = 4096

func newMem(size int64) *memBackend {
	return &memBackend{data: make([]byte, size), alloc: map[int64]bool{}}
}

func (m *memBackend) Size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.data))
}

func (m *memBackend) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > int64(len(m.data)) {
		return block.Errorf(block.ErrOutOfRange, "out of range")
	}
	return nil
}

func (m *memBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	copy(p, m.data[off:])
	return nil
}

func (m *memBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	copy(m.data[off:], p)
	for b := off / memBlock; b*memBlock < off+int64(len(p)); b++ {
		m.alloc[b] = true
	}
	return nil
}

func (m *memBackend) Zero(ctx context.Context, off, n int64, mayTrim, fua, fast bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, n); err != nil {
		return err
	}
	clear(m.data[off : off+n])
	if mayTrim {
		for b := (off + memBlock - 1) / memBlock; (b+1)*memBlock <= off+n; b++ {
			delete(m.alloc, b)
		}
	}
	return nil
}

// at is the byte at off; the test reads it under the lock, since the
// race detector cannot see the kernel order the FUSE requests.
func (m *memBackend) at(off int64) byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.data[off]
}

func (m *memBackend) Trim(ctx context.Context, off, n int64, fua bool) error {
	return m.Zero(ctx, off, n, true, fua, false)
}

func (m *memBackend) Flush(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return nil
}

func (m *memBackend) Truncate(ctx context.Context, size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < int64(len(m.data)) {
		m.data = m.data[:size]
	} else {
		m.data = append(m.data, make([]byte, size-int64(len(m.data)))...)
	}
	return nil
}

func (m *memBackend) AllocatedSize() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.alloc)) * memBlock
}

func (m *memBackend) RequestAlign() int64 { return 512 }

func (m *memBackend) DataAt(ctx context.Context, off int64) (bool, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := off / memBlock
	data := m.alloc[b]
	end := (b + 1) * memBlock
	for end < int64(len(m.data)) && m.alloc[end/memBlock] == data {
		end += memBlock
	}
	return data, min(end, int64(len(m.data))) - off, nil
}

// mountMem mounts a memory node of size over a new file; the test is
// skipped where FUSE cannot be mounted (no /dev/fuse, no privilege).
func mountMem(t *testing.T, m *memBackend, o Options) (*Export, string) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE here: %v", err)
	}
	o.Mountpoint = filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(o.Mountpoint, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := Mount(m, o)
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		t.Skipf("mounting FUSE is not allowed here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e, o.Mountpoint
}

func TestMountErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "nosuch"), "Failed to stat '" + dir + "/nosuch': No such file or directory"},
		{dir, "'" + dir + "' is not a regular file"},
		{"", "Failed to stat '': No such file or directory"},
	} {
		if _, err := Mount(newMem(4096), Options{Mountpoint: tc.path}); err == nil || err.Error() != tc.want {
			t.Errorf("Mount(%q) = %v, want %s", tc.path, err, tc.want)
		}
	}
}

func TestStatAndReadOnly(t *testing.T) {
	m := newMem(1 << 20)
	_ = m.WriteAt(context.Background(), bytes.Repeat([]byte{7}, 8192), 0, false)
	_, path := mountMem(t, m, Options{})
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != syscall.S_IFREG|0o400 || st.Size != 1<<20 || st.Blocks != 16 || st.Blksize != 512 || st.Nlink != 1 || st.Ino != 1 {
		t.Errorf("stat = mode %o size %d blocks %d blksize %d nlink %d ino %d", st.Mode, st.Size, st.Blocks, st.Blksize, st.Nlink, st.Ino)
	}
	got, err := os.ReadFile(path)
	if err != nil || len(got) != 1<<20 || got[8191] != 7 || got[8192] != 0 {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0) // root may open it; writing is refused
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for name, op := range map[string]func() error{
		"write":    func() error { _, err := f.WriteAt([]byte{1}, 0); return err },
		"truncate": func() error { return f.Truncate(4096) },
		"punch hole": func() error {
			return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
		},
	} {
		if err := op(); !errors.Is(err, syscall.EACCES) {
			t.Errorf("%s on a read-only export: %v, want EACCES", name, err)
		}
	}
	if err := os.Chmod(path, 0o600); !errors.Is(err, syscall.EROFS) {
		t.Errorf("chmod +w on a read-only export: %v, want EROFS", err)
	}
	if err := os.Chtimes(path, time.Unix(1, 0), time.Unix(1, 0)); !errors.Is(err, syscall.ENOTSUP) {
		t.Errorf("utimes: %v, want ENOTSUP", err)
	}
}

// Each operation runs on a writable export of a 64 KiB node of 0xaa bytes.
func TestWritableFile(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		growable bool
		op       func(f *os.File) error
		wantErr  error
		wantSize int64
		check    func(t *testing.T, m *memBackend)
	}{
		{name: "write inside", op: func(f *os.File) error { _, err := f.WriteAt([]byte("abc"), 100); return err },
			wantSize: 64 << 10, check: wantBytes(100, "abc")},
		{name: "write across the end is clipped", op: func(f *os.File) error {
			n, err := f.WriteAt([]byte("xyz"), 64<<10-1)
			if n != 1 && err == nil {
				return errors.New("not clipped")
			}
			return nil
		}, wantSize: 64 << 10, check: wantBytes(64<<10-1, "x")},
		{name: "write past the end fails", op: func(f *os.File) error { _, err := f.WriteAt([]byte("q"), 64<<10+4096); return err },
			wantErr: syscall.EIO, wantSize: 64 << 10},
		{name: "growable write grows", growable: true, op: func(f *os.File) error { _, err := f.WriteAt([]byte("end"), 128<<10); return err },
			wantSize: 128<<10 + 3, check: wantBytes(128<<10, "end")},
		{name: "truncate grows", op: func(f *os.File) error { return f.Truncate(1 << 20) }, wantSize: 1 << 20},
		{name: "truncate shrinks", op: func(f *os.File) error { return f.Truncate(4096) }, wantSize: 4096},
		{name: "fallocate at the end grows", op: falloc(0, 64<<10, 4096), wantSize: 68 << 10},
		{name: "fallocate inside is refused", op: falloc(0, 0, 4096), wantErr: syscall.EOPNOTSUPP, wantSize: 64 << 10},
		{name: "punch hole", op: falloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 8192),
			wantSize: 64 << 10, check: func(t *testing.T, m *memBackend) {
				if d, _, _ := m.DataAt(ctx, 0); d || m.at(0) != 0 {
					t.Errorf("punched range still holds data")
				}
			}},
		{name: "punch hole past the end", op: falloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 128<<10, 4096),
			wantErr: syscall.EIO, wantSize: 64 << 10},
		{name: "zero range grows", op: falloc(unix.FALLOC_FL_ZERO_RANGE, 60<<10, 8192), wantSize: 68 << 10,
			check: func(t *testing.T, m *memBackend) {
				if m.at(60<<10) != 0 {
					t.Errorf("zero range left data")
				}
			}},
		{name: "zero range keep size", op: falloc(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 60<<10, 8192), wantSize: 64 << 10},
		{name: "collapse range", op: falloc(unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096), wantErr: syscall.EOPNOTSUPP, wantSize: 64 << 10},
		{name: "fsync", op: func(f *os.File) error { return f.Sync() }, wantSize: 64 << 10,
			check: func(t *testing.T, m *memBackend) {
				m.mu.Lock()
				defer m.mu.Unlock()
				if m.flushes == 0 {
					t.Errorf("fsync did not flush")
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMem(64 << 10)
			_ = m.WriteAt(ctx, bytes.Repeat([]byte{0xaa}, 64<<10), 0, false)
			_, path := mountMem(t, m, Options{Writable: true, Growable: tc.growable})
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.op(f)
			f.Close()
			if !errors.Is(err, tc.wantErr) || (err != nil && tc.wantErr == nil) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if got := m.Size(); got != tc.wantSize {
				t.Errorf("node size %d, want %d", got, tc.wantSize)
			}
			if st, err := os.Stat(path); err != nil || st.Size() != tc.wantSize {
				t.Errorf("file size %v (%v), want %d", st.Size(), err, tc.wantSize)
			}
			if tc.check != nil {
				tc.check(t, m)
			}
		})
	}
}

func falloc(mode uint32, off, n int64) func(f *os.File) error {
	return func(f *os.File) error { return unix.Fallocate(int(f.Fd()), mode, off, n) }
}

func wantBytes(off int64, s string) func(t *testing.T, m *memBackend) {
	return func(t *testing.T, m *memBackend) {
		t.Helper()
		got := make([]byte, len(s))
		_ = m.ReadAt(context.Background(), got, off)
		if string(got) != s {
			t.Errorf("node holds %q at %d, want %q", got, off, s)
		}
	}
}

func TestModes(t *testing.T) {
	for _, tc := range []struct {
		allow   AllowOther
		mode    os.FileMode
		wantErr error
	}{
		{AllowOtherOff, 0o644, syscall.EPERM},
		{AllowOtherOff, 0o400, nil},
		{AllowOtherOn, 0o644, nil},
		{AllowOtherAuto, 0o640, nil}, // root may always use allow_other
	} {
		_, path := mountMem(t, newMem(4096), Options{Writable: true, AllowOther: tc.allow})
		err := os.Chmod(path, tc.mode)
		if !errors.Is(err, tc.wantErr) || (err != nil && tc.wantErr == nil) {
			t.Errorf("allow-other %s: chmod %o: %v, want %v", tc.allow, tc.mode, err, tc.wantErr)
			continue
		}
		st, _ := os.Stat(path)
		if err == nil && st.Mode().Perm() != tc.mode {
			t.Errorf("allow-other %s: mode %o after chmod %o", tc.allow, st.Mode().Perm(), tc.mode)
		}
		// Only an export others may use can be given to another owner.
		err = os.Chown(path, 1, 1)
		if want := tc.allow == AllowOtherOff; errors.Is(err, syscall.ENOTSUP) != want {
			t.Errorf("allow-other %s: chown: %v", tc.allow, err)
		}
		if st, _ := os.Stat(path); err == nil && st.Sys().(*syscall.Stat_t).Uid != 1 {
			t.Errorf("allow-other %s: owner %d after chown 1", tc.allow, st.Sys().(*syscall.Stat_t).Uid)
		}
	}
}

func TestSeekDataHole(t *testing.T) {
	m := newMem(64 << 10)
	_ = m.WriteAt(context.Background(), []byte{1}, 16<<10, false)
	_, path := mountMem(t, m, Options{})
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		off    int64
		whence int
		want   int64
		err    error
	}{
		{0, unix.SEEK_DATA, 16 << 10, nil},
		{0, unix.SEEK_HOLE, 0, nil},
		{16 << 10, unix.SEEK_HOLE, 20 << 10, nil},
		{20 << 10, unix.SEEK_DATA, 0, syscall.ENXIO},
		{64 << 10, unix.SEEK_HOLE, 64 << 10, nil},
		{65 << 10, unix.SEEK_HOLE, 0, syscall.ENXIO},
	} {
		got, err := f.Seek(tc.off, tc.whence)
		if !errors.Is(err, tc.err) || (err == nil && got != tc.want) {
			t.Errorf("seek(%d, %d) = %d, %v; want %d, %v", tc.off, tc.whence, got, err, tc.want, tc.err)
		}
	}
}

// Requests run concurrently and each lands where it was asked.
func TestConcurrentIO(t *testing.T) {
	m := newMem(8 << 20)
	_, path := mountMem(t, m, Options{Writable: true})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			buf := bytes.Repeat([]byte{byte(i + 1)}, 1<<20)
			if _, err := f.WriteAt(buf, int64(i)<<20); err != nil {
				t.Error(err)
			}
			if err := f.Sync(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i := range 8 {
		if m.at(int64(i)<<20) != byte(i+1) || m.at(int64(i+1)<<20-1) != byte(i+1) {
			t.Errorf("MiB %d holds %d", i, m.at(int64(i)<<20))
		}
	}
}

// Closing the export with a file still open takes the mount away and
// fails the open file's requests with ENOTCONN, as qsd's unmount does.
func TestCloseWithOpenFile(t *testing.T) {
	e, path := mountMem(t, newMem(1<<20), Options{Writable: true})
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e.Close()
	if _, err := f.WriteAt([]byte{1}, 0); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("write after close: %v, want ENOTCONN", err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 0 {
		t.Errorf("the mountpoint is not the plain file again: %v, %v", st, err)
	}
	e.Close() // idempotent
}
