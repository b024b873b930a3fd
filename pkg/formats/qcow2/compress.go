package qcow2

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"sync"

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
