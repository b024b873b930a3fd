package qcow2

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// mixed returns n bytes of which the fraction rnd (in 1/16) is random and
// the rest low-entropy letters, in runs, so that the compressed size
// sweeps from tiny to incompressible.
func mixed(seed uint64, n, rnd int) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(rnd)))
	b := make([]byte, n)
	for i := 0; i < n; i += 256 {
		end := min(i+256, n)
		for j := i; j < end; j++ {
			if r.IntN(16) < rnd {
				b[j] = byte(r.Uint32())
			} else {
				b[j] = 'a' + byte(r.IntN(16))
			}
		}
	}
	return b
}

// checkRoundTrip compresses src (one cluster) and decompresses it again.
func checkRoundTrip(t *testing.T, typ uint8, src []byte) {
	t.Helper()
	dst := make([]byte, len(src)-1)
	n, ok, err := compress(typ, src, dst)
	if err != nil {
		t.Fatalf("compress: %v", err)
	}
	if !ok {
		return // written plain
	}
	if n > len(dst) {
		t.Fatalf("compressed to %d bytes, more than %d", n, len(dst))
	}
	// As in the file: the data may be followed by anything.
	stored := append(append([]byte(nil), dst[:n]...), bytes.Repeat([]byte{0xa5}, 600)...)
	got := make([]byte, len(src))
	if err := decompress(typ, stored, got); err != nil {
		t.Fatalf("decompress %d bytes: %v", n, err)
	}
	if !bytes.Equal(got, src) {
		t.Fatalf("round trip of %d compressed bytes differs", n)
	}
}

// Every compressibility, both types, every encoder path (the second try
// of both when the first does poorly): what compress writes, decompress
// reads back.
func TestCompressRoundTrip(t *testing.T) {
	for _, typ := range []uint8{compressionZlib, compressionZstd} {
		for _, cs := range []int{512, 4096, 65536} {
			for rnd := 0; rnd <= 16; rnd++ {
				for seed := uint64(0); seed < 3; seed++ {
					checkRoundTrip(t, typ, mixed(seed, cs, rnd))
				}
			}
			checkRoundTrip(t, typ, make([]byte, cs))
			// Random data then zeroes.
			r := rand.New(rand.NewPCG(uint64(cs), 9))
			for k := 9; k < 16; k++ {
				b := make([]byte, cs)
				for i := range b[:cs*k/16] {
					b[i] = byte(r.Uint32())
				}
				checkRoundTrip(t, typ, b)
			}
			// Random data with short zero runs: both tries of zstd shrink
			// it a little, the second less than the first.
			for _, run := range []int{16, 32, 64} {
				b := make([]byte, cs)
				for i := range b {
					if i%512 >= run {
						b[i] = byte(r.Uint32())
					}
				}
				checkRoundTrip(t, typ, b)
			}
		}
	}
}

func FuzzCompressRoundTrip(f *testing.F) {
	f.Add([]byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), false)
	f.Add(mixed(1, 4096, 8), true)
	f.Add(mixed(2, 4096, 13), false)
	f.Add(mixed(3, 4096, 16), true)
	f.Fuzz(func(t *testing.T, data []byte, zstd bool) {
		if len(data) < 2 || len(data) > 1<<16 {
			return
		}
		typ := uint8(compressionZlib)
		if zstd {
			typ = compressionZstd
		}
		checkRoundTrip(t, typ, data)
	})
}
