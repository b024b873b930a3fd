package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/blockd/blockd/pkg/nbd/wire"
)

var be = binary.BigEndian

// exportInfo is what the handshake learned about the export.
type exportInfo struct {
	size  uint64
	flags uint16 // transmission flags
	// Block size constraints (NBD_INFO_BLOCK_SIZE, or the protocol's
	// defaults when the server sent none).
	minBlock, prefBlock, maxBlock uint32
	structured                    bool
	// metaID is the id of the selected metadata context; hasMeta says
	// whether the server agreed to one.
	metaID  uint32
	hasMeta bool
}

func (i exportInfo) has(f uint16) bool { return i.flags&f != 0 }

// maxOptReply bounds an option reply's payload: every reply we parse is
// short (an info, a context name of at most wire.MaxStringLen, an error
// message); a server that announces more is hostile or broken.
const maxOptReply = 64 << 10

// errUnknownExport is wrapped when the server does not have the export.
var errUnknownExport = errors.New("Requested export not available")

// handshake runs the fixed newstyle negotiation on rw for export: it asks
// for structured replies, selects metaCtx (base:allocation or a dirty
// bitmap's context), and enters transmission with NBD_OPT_GO asking for
// block sizes.
func handshake(rw io.ReadWriter, br *bufio.Reader, export, metaCtx string) (exportInfo, error) {
	var info exportInfo
	var hdr [18]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return info, fmt.Errorf("Failed to read initial magic: %w", err)
	}
	if be.Uint64(hdr[0:]) != wire.MagicNBD {
		return info, errors.New("Bad initial magic received")
	}
	if be.Uint64(hdr[8:]) != wire.MagicOpt {
		return info, errors.New("Server does not support the fixed newstyle handshake")
	}
	sflags := be.Uint16(hdr[16:])
	if sflags&wire.FlagFixedNewstyle == 0 {
		return info, errors.New("Server does not support the fixed newstyle handshake")
	}
	cflags := uint32(wire.ClientFlagFixedNewstyle)
	if sflags&wire.FlagNoZeroes != 0 {
		cflags |= wire.ClientFlagNoZeroes
	}
	var cf [4]byte
	be.PutUint32(cf[:], cflags)
	if _, err := rw.Write(cf[:]); err != nil {
		return info, err
	}
	h := &optConn{w: rw, r: br}

	// Structured replies: without them there is no block status and reads
	// cannot skip holes, but the export is still usable.
	typ, _, err := h.simpleOpt(wire.OptStructuredReply, nil)
	if err != nil {
		return info, err
	}
	info.structured = typ == wire.RepAck

	if info.structured && metaCtx != "" {
		id, ok, err := h.setMetaContext(export, metaCtx)
		if err != nil {
			return info, err
		}
		info.metaID, info.hasMeta = id, ok
	}
	if err := h.optGo(export, &info); err != nil {
		return info, err
	}
	return info, nil
}

// optConn sends options and reads their replies.
type optConn struct {
	w io.Writer
	r *bufio.Reader
}

func (h *optConn) send(opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	be.PutUint64(b[0:], wire.MagicOpt)
	be.PutUint32(b[8:], opt)
	be.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	_, err := h.w.Write(b)
	return err
}

// reply reads one option reply to opt: its type and payload.
func (h *optConn) reply(opt uint32) (uint32, []byte, error) {
	var hdr [20]byte
	if _, err := io.ReadFull(h.r, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("Failed to read option reply: %w", err)
	}
	if be.Uint64(hdr[0:]) != wire.MagicOptReply {
		return 0, nil, errors.New("Unexpected option reply magic")
	}
	if got := be.Uint32(hdr[8:]); got != opt {
		return 0, nil, fmt.Errorf("Unexpected option type %d, expected %d", got, opt)
	}
	typ, n := be.Uint32(hdr[12:]), be.Uint32(hdr[16:])
	if n > maxOptReply {
		return 0, nil, fmt.Errorf("Option reply of %d bytes is too long", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(h.r, data); err != nil {
		return 0, nil, fmt.Errorf("Failed to read option reply: %w", err)
	}
	return typ, data, nil
}

// simpleOpt sends an option whose answer is one ACK or one error; an
// "unsupported" error is returned as a type, not an error.
func (h *optConn) simpleOpt(opt uint32, data []byte) (uint32, []byte, error) {
	if err := h.send(opt, data); err != nil {
		return 0, nil, err
	}
	typ, payload, err := h.reply(opt)
	if err != nil {
		return 0, nil, err
	}
	if typ&wire.RepErrBit != 0 && typ != wire.RepErrUnsup && typ != wire.RepErrPolicy {
		return typ, nil, optError(opt, typ, payload)
	}
	return typ, payload, nil
}

// optError describes an error reply, with the server's message if any.
func optError(opt, typ uint32, msg []byte) error {
	var err error
	switch typ {
	case wire.RepErrUnknown:
		// qsd's words exactly; the server's message is only a hint there.
		return errUnknownExport
	case wire.RepErrTLSReqd:
		err = errors.New("The server requires TLS")
	case wire.RepErrShutdown:
		err = errors.New("Server shutting down before transmission phase")
	default:
		err = fmt.Errorf("Option %d rejected by the server (reply type %#x)", opt, typ)
	}
	if len(msg) > 0 {
		return fmt.Errorf("%w: server reported: %s", err, printable(msg))
	}
	return err
}

// printable keeps a server's message from carrying control characters
// into logs and QMP replies.
func printable(b []byte) string {
	out := make([]rune, 0, len(b))
	for _, r := range string(b) {
		if r < 0x20 || r == 0x7f {
			r = '?'
		}
		out = append(out, r)
	}
	return string(out)
}

// setMetaContext asks for one context on export and returns its id; ok
// is false when the server offered none.
func (h *optConn) setMetaContext(export, ctx string) (id uint32, ok bool, err error) {
	data := make([]byte, 0, 12+len(export)+len(ctx))
	data = be.AppendUint32(data, uint32(len(export)))
	data = append(data, export...)
	data = be.AppendUint32(data, 1)
	data = be.AppendUint32(data, uint32(len(ctx)))
	data = append(data, ctx...)
	if err := h.send(wire.OptSetMetaContext, data); err != nil {
		return 0, false, err
	}
	for {
		typ, payload, err := h.reply(wire.OptSetMetaContext)
		if err != nil {
			return 0, false, err
		}
		switch {
		case typ == wire.RepAck:
			return id, ok, nil
		case typ == wire.RepMetaContext:
			if len(payload) < 4 {
				return 0, false, errors.New("Invalid meta context reply")
			}
			if string(payload[4:]) != ctx || ok {
				return 0, false, fmt.Errorf("Server replied with an unexpected meta context '%s'", printable(payload[4:]))
			}
			id, ok = be.Uint32(payload), true
		case typ == wire.RepErrUnsup || typ == wire.RepErrPolicy:
			return 0, false, nil
		case typ&wire.RepErrBit != 0:
			return 0, false, optError(wire.OptSetMetaContext, typ, payload)
		default:
			return 0, false, fmt.Errorf("Unexpected reply type %d to NBD_OPT_SET_META_CONTEXT", typ)
		}
	}
}

// optGo enters transmission, asking for the block size constraints.
func (h *optConn) optGo(export string, info *exportInfo) error {
	data := make([]byte, 0, 8+len(export))
	data = be.AppendUint32(data, uint32(len(export)))
	data = append(data, export...)
	data = be.AppendUint16(data, 1)
	data = be.AppendUint16(data, wire.InfoBlockSize)
	if err := h.send(wire.OptGo, data); err != nil {
		return err
	}
	info.minBlock, info.prefBlock, info.maxBlock = wire.DefaultMinBlock, wire.DefaultPrefBlock, wire.DefaultMaxBlock
	haveExport := false
	for {
		typ, payload, err := h.reply(wire.OptGo)
		if err != nil {
			return err
		}
		switch {
		case typ == wire.RepAck:
			if !haveExport {
				return errors.New("Server did not send NBD_INFO_EXPORT")
			}
			return checkBlockSizes(info)
		case typ == wire.RepInfo:
			if len(payload) < 2 {
				return errors.New("Invalid NBD_REP_INFO reply")
			}
			switch be.Uint16(payload) {
			case wire.InfoExport:
				if len(payload) != 12 {
					return errors.New("Invalid NBD_INFO_EXPORT reply")
				}
				info.size, info.flags = be.Uint64(payload[2:]), be.Uint16(payload[10:])
				haveExport = true
			case wire.InfoBlockSize:
				if len(payload) != 14 {
					return errors.New("Invalid NBD_INFO_BLOCK_SIZE reply")
				}
				info.minBlock, info.prefBlock, info.maxBlock = be.Uint32(payload[2:]), be.Uint32(payload[6:]), be.Uint32(payload[10:])
			}
		case typ&wire.RepErrBit != 0:
			return optError(wire.OptGo, typ, payload)
		default:
			return fmt.Errorf("Unexpected reply type %d to NBD_OPT_GO", typ)
		}
	}
}

// checkBlockSizes refuses constraints the protocol forbids, so that the
// node's limits are always sane powers of two.
func checkBlockSizes(info *exportInfo) error {
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	if !pow2(info.minBlock) || info.minBlock > 64<<10 {
		return fmt.Errorf("Server minimum block size %d is not a power of two up to 64k", info.minBlock)
	}
	if !pow2(info.prefBlock) || info.prefBlock < info.minBlock {
		return fmt.Errorf("Server preferred block size %d is not a power of two of at least %d", info.prefBlock, info.minBlock)
	}
	if info.maxBlock < info.minBlock || info.maxBlock%info.minBlock != 0 {
		return fmt.Errorf("Server maximum block size %d is not a multiple of %d", info.maxBlock, info.minBlock)
	}
	if info.size > 1<<62 {
		return fmt.Errorf("Export size %d is too large", info.size)
	}
	return nil
}
