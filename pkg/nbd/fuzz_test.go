package nbd_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/blockd/blockd/internal/fuzzcheck"
	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// fuzzServer is shared by the fuzz iterations: a small writable export
// with data, holes, allocation depth and three dirty bitmaps (two of the
// same name, as QEMU allows), small block and buffer limits so that big
// requests stay cheap.
func fuzzServer(f *testing.F) *nbd.Server {
	s := nbd.NewServer(nbd.ServerOptions{Workers: 4, MaxBufferBytes: 2 * MiB})
	f.Cleanup(func() { s.Close() })
	base := nbdtest.NewMem(MiB, 4096)
	base.WriteAt(context.Background(), make([]byte, 8192), 64<<10, false)
	m := nbdtest.NewMem(MiB, 4096).WithBacking(base)
	m.WriteAt(context.Background(), []byte("hello"), 0, false)
	b0 := nbdtest.NewBitmap(MiB, 64<<10)
	b0.Set(64<<10, 100)
	b1 := nbdtest.NewBitmap(MiB, 512)
	for off := int64(0); off < MiB; off += 3 << 10 {
		b1.Set(off, 512)
	}
	bitmaps := []nbd.ExportBitmap{{Name: "b0", Map: b0}, {Name: "b1", Map: b1}, {Name: "b0", Map: b1}}
	for _, o := range []nbd.ExportOptions{
		{Name: "e", Writable: true, AllocationDepth: true, MaxBlock: MiB, SparseReadMin: 1, Bitmaps: bitmaps},
		{Name: "", Description: "default", MaxBlock: 64 << 10, MinBlock: 512},
	} {
		if _, err := s.AddExport(m, o); err != nil {
			f.Fatal(err)
		}
	}
	return s
}

// feed runs one connection with input as everything the client sends,
// draining what the server sends, and fails if the server hangs.
func feed(t *testing.T, s *nbd.Server, input []byte) {
	cc, sc := net.Pipe()
	done := make(chan struct{})
	go func() {
		s.ServeConn(sc)
		close(done)
	}()
	drained := make(chan struct{})
	go func() {
		io.Copy(io.Discard, cc)
		close(drained)
	}()
	cc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	cc.Write(input) // fails early when the server closes: fine
	cc.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not end the connection")
	}
	<-drained
}

func opt(o uint32, data []byte) []byte {
	b := be.AppendUint64(nil, 0x49484156454F5054)
	b = be.AppendUint32(b, o)
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func req(typ, flags uint16, handle, off uint64, length uint32, data []byte) []byte {
	b := be.AppendUint32(nil, 0x25609513)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, handle)
	b = be.AppendUint64(b, off)
	b = be.AppendUint32(b, length)
	return append(b, data...)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// FuzzOptions feeds arbitrary bytes as the client side of the handshake,
// after the client flags.
func FuzzOptions(f *testing.F) {
	s := fuzzServer(f)
	f.Add(opt(optList, nil))
	f.Add(cat(opt(optStructuredReply, nil), opt(optListMetaContext, metaData("e")), opt(optAbort, nil)))
	f.Add(cat(opt(optStructuredReply, nil), opt(optSetMetaContext, metaData("e", "base:allocation", "qemu:allocation-depth")),
		opt(optInfo, infoData("e", 0, 1, 2, 3)), opt(optGo, infoData("e", 3))))
	f.Add(opt(optExportName, []byte("e")))
	f.Add(opt(optExportName, nil))
	f.Add(cat(opt(optStartTLS, nil), opt(99, []byte("junk")), opt(optGo, infoData("nope"))))
	f.Add(opt(optGo, []byte{0xff, 0xff, 0xff, 0xf0, 0, 0}))
	f.Add(opt(optSetMetaContext, []byte{0, 0, 0, 1, 'e', 0xff, 0xff, 0xff, 0xff}))
	f.Add(cat(opt(optListMetaContext, metaData("e", "qemu:", "qemu:dirty-bitmap:", "qemu:dirty-bitmap:b1")),
		opt(optStructuredReply, nil), opt(optSetMetaContext, metaData("e", "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:", "qemu:dirty-bitmap:nope")),
		opt(optGo, infoData("e"))))
	f.Add(cat(opt(optStructuredReply, nil), opt(optSetMetaContext, metaData("", "qemu:dirty-bitmap:b0")),
		opt(optListMetaContext, metaData("zz", "qemu:dirty-bitmap:b0")), opt(optSetMetaContext, append(metaData("e", "qemu:dirty-bitmap:b1"), 0, 0, 0, 9))))
	f.Fuzz(func(t *testing.T, data []byte) {
		flags := []byte{0, 0, 0, 3}
		if len(data) > 0 && data[0] == 0xff {
			flags = []byte{0, 0, 0, data[len(data)-1] & 7}
		}
		fuzzcheck.Bounded(t, func() { feed(t, s, cat(flags, data)) })
	})
}

// FuzzRequests feeds arbitrary bytes as the transmission phase of a
// connection that negotiated structured replies and both allocation
// metadata contexts (with the second bit of the first byte: and the
// dirty bitmaps), or (first byte odd) a plain NBD_OPT_EXPORT_NAME one.
func FuzzRequests(f *testing.F) {
	s := fuzzServer(f)
	f.Add([]byte{0}, req(cmdRead, 0, 1, 0, 4096, nil))
	f.Add([]byte{1}, req(cmdRead, 0, 1, 0, 4096, nil))
	f.Add([]byte{0}, cat(req(cmdWrite, flagFUA, 1, 4096, 5, []byte("abcde")), req(cmdRead, flagDF, 2, 4090, 20, nil), req(cmdFlush, 0, 3, 0, 0, nil)))
	f.Add([]byte{0}, cat(req(cmdBlockStatus, 0, 1, 0, MiB, nil), req(cmdBlockStatus, flagReqOne, 2, 100, 9000, nil)))
	f.Add([]byte{0}, cat(req(cmdWriteZeroes, flagFastZero|flagNoHole, 1, 0, 70000, nil), req(cmdTrim, 0, 2, 512, 8192, nil),
		req(cmdCache, 0, 3, 0, 4096, nil), req(cmdRead, 0, 4, 0, 128<<10, nil)))
	f.Add([]byte{0}, cat(req(cmdWrite, 0, 1, 0, 2*MiB, nil), req(99, 0, 2, 0, 0, nil), req(cmdDisc, 0, 3, 0, 0, nil)))
	f.Add([]byte{1}, cat(req(cmdRead, 0, 1, MiB-1, 2, nil), []byte{0x25, 0x60}))
	f.Add([]byte{2}, cat(req(cmdBlockStatus, 0, 1, 0, MiB, nil), req(cmdBlockStatus, flagReqOne, 2, 1000, 70000, nil),
		req(cmdWrite, 0, 3, 0, 512, make([]byte, 512)), req(cmdBlockStatus, 0, 4, MiB-512, 512, nil)))
	f.Fuzz(func(t *testing.T, mode []byte, data []byte) {
		var hs []byte
		if len(mode) > 0 && mode[0]&1 == 1 {
			hs = cat([]byte{0, 0, 0, 3}, opt(optExportName, nil))
		} else {
			ctxs := []string{"base:allocation", "qemu:allocation-depth"}
			if len(mode) > 0 && mode[0]&2 != 0 {
				ctxs = append(ctxs, "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1")
			}
			hs = cat([]byte{0, 0, 0, 3}, opt(optStructuredReply, nil),
				opt(optSetMetaContext, metaData("e", ctxs...)),
				opt(optGo, infoData("e", 3)))
		}
		fuzzcheck.Bounded(t, func() { feed(t, s, cat(hs, data)) })
	})
}
