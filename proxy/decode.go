package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

var (
	errTooLarge      = errors.New("decoded body too large")
	errBadCompressed = errors.New("body could not be decompressed")
	errUnsupportedCE = errors.New("unsupported content encoding")
	errOverBudget    = errors.New("request memory budget exhausted")
)

// decoders pools gzip readers, shares one zstd decoder, and pools buffers
// for request bodies, as read from the connection or decoded. Safe for
// concurrent use; build one with newDecoders.
type decoders struct {
	gzip   sync.Pool // of *gzip.Reader
	zstd   *zstd.Decoder
	bodies bodyPool
	limit  int
}

// maxZstdWindow is the largest window a zstd frame may declare (32 MiB,
// the reference decoder's default limit; streaming encoders declare 2-8
// MiB). Decoding whole, the window costs nothing of its own: see
// newDecoders.
const maxZstdWindow = 32 << 20

// newDecoders returns decoders for bodies of at most limit bytes decoded.
// zstd bodies are decoded whole (DecodeAll) into a buffer no larger than
// limit+1 bytes, sized from the frame's declared content size or grown as
// needed: the decoder keeps its history in that buffer rather than in a
// ring of the window size a frame declares, so a 1 KB frame declaring a
// 32 MiB window costs no more than what it decodes to. It decodes at most
// GOMAXPROCS bodies at once; more wait their turn.
func newDecoders(limit int) (*decoders, error) {
	window := max(uint64(limit)+1, maxZstdWindow)
	zr, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(window),
		zstd.WithDecoderMaxWindow(window),
		zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, err
	}
	return &decoders{zstd: zr, limit: limit}, nil
}

// decode returns body decoded per its Content-Encoding, at most d.limit
// bytes, charging what it holds to c. The result may alias body (no
// encoding) or the pooled buffer bb (nil when none was used); hand bb back
// to d.bodies when done with the result. A body that decodes to more than
// the limit gives errTooLarge without ever holding more than limit+1
// bytes: a decompression bomb costs a bounded read, not the process.
func (d *decoders) decode(encoding, body []byte, c *charge) (out []byte, bb *bodyBuf, err error) {
	switch {
	case len(encoding) == 0 || bytes.EqualFold(encoding, []byte("identity")):
		if len(body) > d.limit {
			return nil, nil, errTooLarge
		}
		return body, nil, nil
	case bytes.EqualFold(encoding, []byte("gzip")) || bytes.EqualFold(encoding, []byte("x-gzip")):
		zr, _ := d.gzip.Get().(*gzip.Reader)
		if zr == nil {
			zr = new(gzip.Reader)
		}
		defer d.gzip.Put(zr)
		if err := zr.Reset(bytes.NewReader(body)); err != nil {
			return nil, nil, errBadCompressed
		}
		return d.readAll(zr, gzipSize(body), c)
	case bytes.EqualFold(encoding, []byte("zstd")):
		return d.decodeZstd(body, c)
	}
	return nil, nil, errUnsupportedCE
}

// gzipSize returns the decoded size a gzip body's trailer states (ISIZE,
// the last member's size modulo 2^32), or 0 when the body is too short to
// have one. It is only a hint: a body of several members, or a lying one,
// is still read to its end or to the limit.
func gzipSize(body []byte) int {
	if len(body) < 18 { // a 10-byte header and the 8-byte trailer
		return 0
	}
	return int(binary.LittleEndian.Uint32(body[len(body)-4:]))
}

// readAll reads r's decoded body, sizing the buffer from hint (0: none)
// when the hint is within the limit, so a body of known size is read into
// one allocation instead of a chain of doublings.
func (d *decoders) readAll(r io.Reader, hint int, c *charge) ([]byte, *bodyBuf, error) {
	bb, n, err := d.bodies.read(r, d.limit, min(hint, d.limit)+1, c)
	switch {
	case errors.Is(err, errOverBudget):
	case err != nil:
		err = errBadCompressed
	case n > int64(d.limit):
		err = errTooLarge
	}
	if err != nil {
		d.bodies.put(bb)
		return nil, nil, err
	}
	return bb.B, bb, nil
}

// decodeZstd decodes body whole into a pooled buffer charged to c: of the
// size the first frame declares, plus one byte, when it declares one (more
// than the limit is refused at once), else first 256 KiB (most bodies are
// smaller) and, if that is not enough, limit+1 bytes. The decoder stops at
// the buffer's capacity (WithDecodeAllCapLimit), give or take one block,
// and says so with an error; in the smaller buffer any error is taken for
// that and the body decoded again, so a corrupt body costs at most two
// decodes, each bounded.
func (d *decoders) decodeZstd(body []byte, c *charge) ([]byte, *bodyBuf, error) {
	size := min(d.limit+1, max(256<<10, 4*len(body)))
	var h zstd.Header
	if err := h.Decode(body); err == nil && h.HasFCS {
		if h.FrameContentSize > uint64(d.limit) {
			return nil, nil, errTooLarge
		}
		size = int(h.FrameContentSize) + 1
	}
	bb, ok := d.bodies.get(c)
	if !ok {
		return nil, nil, errOverBudget
	}
	for {
		if !reserve(bb, size, c) {
			d.bodies.put(bb)
			return nil, nil, errOverBudget
		}
		out, err := d.zstd.DecodeAll(body, bb.B[:0])
		switch {
		case err != nil && cap(bb.B) <= d.limit && !errors.Is(err, zstd.ErrWindowSizeExceeded):
			size = d.limit + 1
			continue
		case errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) ||
			(err != nil && strings.Contains(err.Error(), "output bigger than")) || (err == nil && len(out) > d.limit):
			err = errTooLarge
		case err != nil:
			err = errBadCompressed
		}
		if err != nil {
			d.bodies.put(bb)
			return nil, nil, err
		}
		bb.B = out
		return out, bb, nil
	}
}
