package proxy

import (
	"io"
	"sync"

	"github.com/valyala/bytebufferpool"
)

// bodyPool hands out buffers for request bodies read from a stream or a
// decompressor, each with the reader that bounds the read, so reading a body
// allocates nothing in steady state. The zero value is ready.
type bodyPool struct{ p sync.Pool }

// bodyBuf is a body read into a pooled buffer; B holds it.
type bodyBuf struct {
	bytebufferpool.ByteBuffer
	lr io.LimitedReader
}

// read reads r to its end, or to limit+1 bytes, whichever comes first; n >
// limit means the body is too large. The buffer is the caller's until it
// hands it back with put, even when err is not nil.
func (p *bodyPool) read(r io.Reader, limit int) (bb *bodyBuf, n int64, err error) {
	bb, _ = p.p.Get().(*bodyBuf)
	if bb == nil {
		bb = new(bodyBuf)
	}
	bb.Reset()
	bb.lr = io.LimitedReader{R: r, N: int64(limit) + 1}
	n, err = bb.ReadFrom(&bb.lr)
	bb.lr.R = nil
	return bb, n, err
}

// maxPooledBody is the largest buffer kept for reuse: one that grew for a
// rare multi-megabyte body is left to the garbage collector rather than
// held by the pool.
const maxPooledBody = 1 << 20

// put returns bb (nil is allowed) to the pool; its bytes must not be used
// afterwards.
func (p *bodyPool) put(bb *bodyBuf) {
	if bb != nil && cap(bb.B) <= maxPooledBody {
		p.p.Put(bb)
	}
}
