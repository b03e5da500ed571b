package upstream

import (
	"bufio"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// GzipPool compresses batches with gzip at BestSpeed: batches are large and
// the proxy's CPU is better spent accepting events; JSON still shrinks
// ~5-10x. Its zero value is ready to use; it is safe for concurrent use.
type GzipPool struct{ p sync.Pool }

type gzipper struct {
	zw *gzip.Writer
	// bw gathers a batch's small parts into 64 KiB writes. A batch of
	// one-event requests is 100,000 writes of ~240 B otherwise, and the gzip
	// writer's fixed cost per write (its CRC-32 above all) then costs more
	// than the compression itself. Parts of 4 KiB or more go straight to
	// the gzip writer.
	bw *bufio.Writer
}

// Compress writes b to dst as one gzip member. tee, if not nil, sees the
// uncompressed bytes as well.
func (g *GzipPool) Compress(dst io.Writer, b *Batch, tee io.Writer) error {
	c, _ := g.p.Get().(*gzipper)
	if c == nil {
		zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // a valid level: no error
		c = &gzipper{zw: zw, bw: bufio.NewWriterSize(nil, 64<<10)}
	}
	defer g.p.Put(c)
	return encode(c.zw, c.bw, dst, b, tee)
}

// encoder is a pooled compressing writer: gzip's or zstd's.
type encoder interface {
	io.WriteCloser
	Reset(io.Writer)
}

// encode compresses b's parts into dst with zw, gathering small parts
// through bw; tee, if not nil, sees the uncompressed bytes as well.
func encode(zw encoder, bw *bufio.Writer, dst io.Writer, b *Batch, tee io.Writer) error {
	zw.Reset(dst)
	var w io.Writer = zw
	if tee != nil {
		w = io.MultiWriter(zw, tee)
	}
	if err := writeParts(bw, w, b.Parts); err != nil {
		return err
	}
	return zw.Close()
}

// writeParts writes parts to w through bw: parts under 4 KiB are gathered
// into bw's large writes, larger ones go straight to w.
func writeParts(bw *bufio.Writer, w io.Writer, parts [][]byte) error {
	bw.Reset(w)
	for _, p := range parts {
		var err error
		if len(p) < 4<<10 {
			_, err = bw.Write(p)
		} else if err = bw.Flush(); err == nil { // large enough: no copy
			_, err = w.Write(p)
		}
		if err != nil {
			return err
		}
	}
	return bw.Flush()
}
