package proxy

import (
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/valyala/bytebufferpool"
)

// memBudget bounds the memory all requests hold at once for their bodies:
// as read from the connection, as decoded, and the index of their lines
// (Options.RequestMemoryBytes). Whatever clients send, a request that would
// take more than is left is refused (503 with Retry-After) instead of
// growing the process: 100 parallel zstd or gzip bombs, or 200 held
// wait=true requests, cost at most the budget. Safe for concurrent use.
type memBudget struct {
	max  int64
	used atomic.Int64
}

// charge is one request's share of a memBudget. It is used by one request's
// goroutine only; its zero value with b set holds nothing.
type charge struct {
	b *memBudget
	n int64
}

// take reserves n more bytes for the request, or nothing and reports false.
func (c *charge) take(n int) bool {
	if n <= 0 {
		return true
	}
	if c.b.used.Add(int64(n)) > c.b.max {
		c.b.used.Add(-int64(n))
		return false
	}
	c.n += int64(n)
	return true
}

// force reserves n more bytes even past the budget: memory already
// allocated (a size class rounding up a buffer's growth) is counted, not
// refused.
func (c *charge) force(n int) {
	if n > 0 {
		c.b.used.Add(int64(n))
		c.n += int64(n)
	}
}

// release gives back everything the request reserved. It is idempotent.
func (c *charge) release() {
	c.b.used.Add(-c.n)
	c.n = 0
}

// bodyPool hands out buffers for request bodies read from a stream or a
// decompressor, each with the reader that bounds the read, so reading a body
// allocates nothing in steady state. The zero value is ready.
type bodyPool struct{ p sync.Pool }

// bodyBuf is a body read into a pooled buffer; B holds it.
type bodyBuf struct {
	bytebufferpool.ByteBuffer
	lr io.LimitedReader
}

// get returns an empty buffer whose capacity is charged to c, or nil and
// false when the budget has no room for it.
func (p *bodyPool) get(c *charge) (*bodyBuf, bool) {
	bb, _ := p.p.Get().(*bodyBuf)
	if bb == nil {
		bb = new(bodyBuf)
	}
	bb.Reset()
	if !c.take(cap(bb.B)) {
		p.put(bb)
		return nil, false
	}
	return bb, true
}

// reserve makes bb's capacity at least n bytes, charging the increase to
// c; false means the budget has no room and bb is unchanged.
func reserve(bb *bodyBuf, n int, c *charge) bool {
	more := n - cap(bb.B)
	if more <= 0 {
		return true
	}
	if !c.take(more) {
		return false
	}
	before := cap(bb.B)
	bb.B = slices.Grow(bb.B, n-len(bb.B))
	c.force(cap(bb.B) - before - more)
	return true
}

// read reads r to its end, or to limit+1 bytes, whichever comes first; n >
// limit means the body is too large. sizeHint, when larger than the pooled
// buffer, is the capacity reserved before reading (the size the body says
// it has); the buffer still grows past it as needed. Every byte of buffer
// it grows is charged to c first, so a body costs the budget what it really
// holds as it arrives, and a slow client holds only what it has sent. errOverBudget
// means the budget ran out. The buffer (nil if none was had) is the
// caller's until it hands it back with put, even when err is not nil.
func (p *bodyPool) read(r io.Reader, limit, sizeHint int, c *charge) (bb *bodyBuf, n int64, err error) {
	bb, ok := p.get(c)
	if !ok {
		return nil, 0, errOverBudget
	}
	if sizeHint > cap(bb.B) && !reserve(bb, sizeHint, c) {
		return bb, 0, errOverBudget
	}
	bb.lr = io.LimitedReader{R: r, N: int64(limit) + 1}
	defer func() { bb.lr.R = nil }()
	for bb.lr.N > 0 {
		if len(bb.B) == cap(bb.B) && !reserve(bb, len(bb.B)+min(max(cap(bb.B), 4<<10), int(bb.lr.N)), c) {
			return bb, int64(len(bb.B)), errOverBudget
		}
		m, rerr := bb.lr.Read(bb.B[len(bb.B):cap(bb.B)])
		bb.B = bb.B[:len(bb.B)+m]
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return bb, int64(len(bb.B)), rerr
		}
	}
	return bb, int64(len(bb.B)), nil
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
