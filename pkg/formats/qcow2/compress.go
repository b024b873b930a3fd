package qcow2

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"runtime"
	"sync"

	kflate "github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// Compressed clusters hold one cluster of data compressed either as a raw
// deflate stream (zlib's format without header, as qemu writes it with a
// 4 KiB window) or as a zstd frame. The compressed bytes may be followed
// by unrelated data in the same sectors, so decompression stops as soon
// as one cluster has been produced. Output never exceeds dst.

var flatePool sync.Pool // io.ReadCloser implementing flate.Resetter

var zstdPool = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(64<<20),
		zstd.WithDecoderMaxWindow(32<<20))
	if err != nil {
		return err
	}
	return d
}}

var errShort = errors.New("compressed data ends before the cluster is complete")

// decompress fills dst (one cluster) from src.
func decompress(typ uint8, src, dst []byte) error {
	switch typ {
	case compressionZlib:
		var r io.ReadCloser
		if v := flatePool.Get(); v != nil {
			r = v.(io.ReadCloser)
			if err := r.(flate.Resetter).Reset(bytes.NewReader(src), nil); err != nil {
				return err
			}
		} else {
			r = flate.NewReader(bytes.NewReader(src))
		}
		_, err := io.ReadFull(r, dst)
		flatePool.Put(r)
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return errShort
		}
		return err
	case compressionZstd:
		v := zstdPool.Get()
		d, ok := v.(*zstd.Decoder)
		if !ok {
			return v.(error)
		}
		defer zstdPool.Put(d)
		if err := d.Reset(bytes.NewReader(src)); err != nil {
			return err
		}
		_, err := io.ReadFull(d, dst)
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return errShort
		}
		return err
	}
	return errors.New("unknown compression type")
}

// Compressed writes make the same formats: raw deflate limited to a
// 4 KiB window (qemu inflates with a window of 2^12 bytes, so a longer
// match distance would not decompress there), or one zstd frame.

// deflateWindow is the window qemu's zlib streams use.
const deflateWindow = 4096

var deflatePool sync.Pool // *kflate.Writer

var (
	zstdEncOnce sync.Once
	zstdEnc     *zstd.Encoder // the default level
	zstdBetter  *zstd.Encoder // for what the default level does not shrink
	zstdEncErr  error
)

// errFull says the compressed data would not be smaller than dst.
var errFull = errors.New("compressed data does not fit")

// fixedBuf is an io.Writer into a fixed slice that fails when full.
type fixedBuf struct {
	b []byte
	n int
}

func (w *fixedBuf) Write(p []byte) (int, error) {
	if len(p) > len(w.b)-w.n {
		return 0, errFull
	}
	w.n += copy(w.b[w.n:], p)
	return len(p), nil
}

// compress compresses src (one cluster) into dst and returns the length
// of the compressed data, or ok=false when it does not fit into dst: the
// caller then writes the cluster uncompressed.
//
// The fast encoders store a block raw when they find no matches, even
// where entropy coding alone would halve it (data of few distinct bytes
// without repeats). So when the first try does poorly, a second one is
// made and the smaller kept: for zlib a Huffman-only stream (valid for
// any window), for zstd a better level.
func compress(typ uint8, src, dst []byte) (n int, ok bool, err error) {
	switch typ {
	case compressionZlib:
		n, ok, err = deflateInto(&deflatePool, src, dst, deflateWindow)
		if err != nil || (ok && n <= len(src)*3/4) {
			return n, ok, err
		}
		scratch := getScratch(len(dst))
		defer putScratch(scratch)
		n2, ok2, err := deflateInto(&huffPool, src, scratch[:len(dst)], 0)
		if err != nil || !ok2 || (ok && n <= n2) {
			return n, ok, err
		}
		return copy(dst, scratch[:n2]), true, nil
	case compressionZstd:
		zstdEncOnce.Do(func() {
			zstdEnc, zstdEncErr = zstd.NewWriter(nil,
				zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
				zstd.WithLowerEncoderMem(true))
			if zstdEncErr == nil {
				zstdBetter, zstdEncErr = zstd.NewWriter(nil,
					zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
					zstd.WithLowerEncoderMem(true),
					zstd.WithEncoderLevel(zstd.SpeedBetterCompression))
			}
		})
		if zstdEncErr != nil {
			return 0, false, zstdEncErr
		}
		// EncodeAll wants room for the worst case, more than dst has.
		scratch := getScratch(len(src) + len(src)/4 + 1024)
		defer putScratch(scratch)
		out := zstdEnc.EncodeAll(src, scratch[:0])
		if len(out) > len(src)*3/4 {
			// The default level stores literals raw when it finds no
			// matches; the better one still entropy-codes them.
			scratch2 := getScratch(cap(scratch))
			defer putScratch(scratch2)
			if o2 := zstdBetter.EncodeAll(src, scratch2[:0]); len(o2) < len(out) {
				out = o2
			}
		}
		if len(out) > len(dst) {
			return 0, false, nil
		}
		return copy(dst, out), true, nil
	}
	return 0, false, errors.New("unknown compression type")
}

var (
	huffPool    sync.Pool // *kflate.Writer, Huffman only
	scratchPool sync.Pool // *[]byte
)

// deflateInto compresses src into dst with a pooled writer: a window of
// window bytes, or Huffman only (window 0).
func deflateInto(pool *sync.Pool, src, dst []byte, window int) (int, bool, error) {
	out := &fixedBuf{b: dst}
	w, _ := pool.Get().(*kflate.Writer)
	var err error
	switch {
	case w != nil:
		w.Reset(out)
	case window > 0:
		w, err = kflate.NewWriterWindow(out, window)
	default:
		w, err = kflate.NewWriter(out, kflate.HuffmanOnly)
	}
	if err != nil {
		return 0, false, err
	}
	_, err = w.Write(src)
	if err == nil {
		err = w.Close()
	}
	pool.Put(w)
	switch {
	case errors.Is(err, errFull):
		return 0, false, nil
	case err != nil:
		return 0, false, err
	}
	return out.n, true, nil
}

func getScratch(n int) []byte {
	if p, _ := scratchPool.Get().(*[]byte); p != nil && cap(*p) >= n {
		return (*p)[:n]
	}
	return make([]byte, n)
}

func putScratch(b []byte) { scratchPool.Put(&b) }
