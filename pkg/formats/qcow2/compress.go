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
	zstdEnc     *zstd.Encoder
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
func compress(typ uint8, src, dst []byte) (n int, ok bool, err error) {
	switch typ {
	case compressionZlib:
		out := &fixedBuf{b: dst}
		w, _ := deflatePool.Get().(*kflate.Writer)
		if w == nil {
			if w, err = kflate.NewWriterWindow(out, deflateWindow); err != nil {
				return 0, false, err
			}
		} else {
			w.Reset(out)
		}
		_, err = w.Write(src)
		if err == nil {
			err = w.Close()
		}
		deflatePool.Put(w)
		switch {
		case errors.Is(err, errFull):
			return 0, false, nil
		case err != nil:
			return 0, false, err
		}
		return out.n, true, nil
	case compressionZstd:
		zstdEncOnce.Do(func() {
			zstdEnc, zstdEncErr = zstd.NewWriter(nil,
				zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
				zstd.WithLowerEncoderMem(true))
		})
		if zstdEncErr != nil {
			return 0, false, zstdEncErr
		}
		out := zstdEnc.EncodeAll(src, dst[:0:len(dst)])
		if len(out) > len(dst) || &out[0] != &dst[0] {
			// EncodeAll grew a new slice: it did not fit.
			return 0, false, nil
		}
		return len(out), true, nil
	}
	return 0, false, errors.New("unknown compression type")
}
