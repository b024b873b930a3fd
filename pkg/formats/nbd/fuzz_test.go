package nbd

import (
	"bufio"
	"bytes"
	"io"
	"testing"

	"github.com/blockd/blockd/internal/fuzzcheck"
	"github.com/blockd/blockd/pkg/nbd/wire"
)

// The client reads two things a hostile server controls: the option
// replies of the handshake and the replies of transmission. Both targets
// feed a server's bytes to the client's parser and require an error or a
// result, never a panic, a hang or an allocation the input did not pay
// for.

// fuzzRequests are the requests a reply may answer, by handle.
func fuzzRequests() map[uint64]*request {
	return map[uint64]*request{
		1: {cmd: wire.CmdRead, off: 4096, length: 4096, buf: make([]byte, 4096)},
		2: {cmd: wire.CmdBlockStatus, off: 0, length: 1 << 20},
		3: {cmd: wire.CmdWrite, off: 0, length: 512},
		4: {cmd: wire.CmdRead, off: 0, length: 0, buf: []byte{}},
	}
}

func appendChunk(b []byte, flags, typ uint16, handle uint64, payload []byte) []byte {
	b = be.AppendUint32(b, wire.MagicStructured)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, handle)
	b = be.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// validReplies is a seed: a chunked read, a block status, a simple reply
// and an error chunk.
func validReplies() []byte {
	var b []byte
	data := be.AppendUint64(nil, 4096)
	data = append(data, bytes.Repeat([]byte{1}, 1024)...)
	b = appendChunk(b, 0, wire.ChunkOffsetData, 1, data)
	hole := be.AppendUint64(nil, 4096+1024)
	hole = be.AppendUint32(hole, 3072)
	b = appendChunk(b, wire.ReplyFlagDone, wire.ChunkOffsetHole, 1, hole)
	st := be.AppendUint32(nil, 0)
	st = be.AppendUint32(st, 65536)
	st = be.AppendUint32(st, wire.StateHole|wire.StateZero)
	b = appendChunk(b, wire.ReplyFlagDone, wire.ChunkBlockStatus, 2, st)
	b = be.AppendUint32(b, wire.MagicSimple)
	b = be.AppendUint32(b, 0)
	b = be.AppendUint64(b, 3)
	e := be.AppendUint32(nil, wire.ErrnoNoSpc)
	e = be.AppendUint16(e, 4)
	e = append(e, "full"...)
	return appendChunk(b, wire.ReplyFlagDone, wire.ChunkError, 4, e)
}

func FuzzReplies(f *testing.F) {
	f.Add(true, validReplies())
	f.Add(false, []byte{0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add(true, appendChunk(nil, wire.ReplyFlagDone, wire.ChunkOffsetData, 1, be.AppendUint64(nil, 1<<63)))
	f.Fuzz(func(t *testing.T, structured bool, input []byte) {
		fuzzcheck.Bounded(t, func() {
			reqs := fuzzRequests()
			p := replyParser{r: bytes.NewReader(input), structured: structured, lookup: func(h uint64) *request { return reqs[h] }}
			for range 1000 {
				r, last, err := p.next()
				if err != nil {
					return
				}
				if last {
					delete(reqs, p.handle)
				}
				if r.cmd == wire.CmdRead && len(r.buf) != int(r.length) {
					t.Fatalf("read buffer resized")
				}
			}
		})
	})
}

// validHandshake is a seed: a server's side of a successful negotiation
// with structured replies, base:allocation and block sizes.
func validHandshake() []byte {
	b := be.AppendUint64(nil, wire.MagicNBD)
	b = be.AppendUint64(b, wire.MagicOpt)
	b = be.AppendUint16(b, wire.FlagFixedNewstyle|wire.FlagNoZeroes)
	rep := func(opt, typ uint32, data []byte) {
		b = be.AppendUint64(b, wire.MagicOptReply)
		b = be.AppendUint32(b, opt)
		b = be.AppendUint32(b, typ)
		b = be.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	rep(wire.OptStructuredReply, wire.RepAck, nil)
	rep(wire.OptSetMetaContext, wire.RepMetaContext, append(be.AppendUint32(nil, 7), wire.CtxBaseAllocation...))
	rep(wire.OptSetMetaContext, wire.RepAck, nil)
	exp := be.AppendUint16(nil, wire.InfoExport)
	exp = be.AppendUint64(exp, 1<<20)
	exp = be.AppendUint16(exp, wire.TFHasFlags|wire.TFSendFlush)
	rep(wire.OptGo, wire.RepInfo, exp)
	bs := be.AppendUint16(nil, wire.InfoBlockSize)
	for _, v := range []uint32{512, 4096, 1 << 20} {
		bs = be.AppendUint32(bs, v)
	}
	rep(wire.OptGo, wire.RepInfo, bs)
	rep(wire.OptGo, wire.RepAck, nil)
	return b
}

func FuzzHandshake(f *testing.F) {
	f.Add(validHandshake())
	f.Add(validHandshake()[:40])
	f.Fuzz(func(t *testing.T, input []byte) {
		fuzzcheck.Bounded(t, func() {
			rw := struct {
				io.Reader
				io.Writer
			}{bytes.NewReader(input), io.Discard}
			info, err := handshake(rw, bufio.NewReader(rw), "e", wire.CtxBaseAllocation)
			if err == nil && (info.minBlock == 0 || info.maxBlock < info.minBlock) {
				t.Fatalf("accepted block sizes %+v", info)
			}
		})
	})
}

// TestSeedsParse: the seeds above are what a correct server sends, and
// the client takes them.
func TestSeedsParse(t *testing.T) {
	rw := struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(validHandshake()), io.Discard}
	info, err := handshake(rw, bufio.NewReader(rw), "e", wire.CtxBaseAllocation)
	if err != nil || !info.structured || !info.hasMeta || info.metaID != 7 || info.size != 1<<20 || info.minBlock != 512 {
		t.Fatalf("handshake: %+v, %v", info, err)
	}
	reqs := fuzzRequests()
	p := replyParser{r: bytes.NewReader(validReplies()), structured: true, lookup: func(h uint64) *request { return reqs[h] }}
	for range 5 {
		if _, _, err := p.next(); err != nil {
			t.Fatal(err)
		}
	}
	if r := reqs[1]; r.buf[0] != 1 || r.buf[1023] != 1 || r.buf[1024] != 0 {
		t.Error("read chunks landed in the wrong place")
	}
	if r := reqs[2]; len(r.extents) != 1 || r.extents[0].length != 65536 {
		t.Errorf("block status %+v", r.extents)
	}
	if r := reqs[4]; r.err == nil || r.err.Error() != "No space left on device" {
		t.Errorf("error chunk: %v", r.err)
	}
}
