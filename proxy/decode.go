package proxy

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

var (
	errTooLarge      = errors.New("decoded body too large")
	errBadCompressed = errors.New("body could not be decompressed")
	errUnsupportedCE = errors.New("unsupported content encoding")
)

// decoders pools gzip and zstd readers, and buffers for request bodies,
// as read from the connection or decoded.
// Safe for concurrent use; the zero value is ready.
type decoders struct {
	gzip   sync.Pool // of *gzip.Reader
	zstd   sync.Pool // of *zstd.Decoder
	bodies bodyPool
}

// decode returns body decoded per its Content-Encoding, at most limit bytes.
// The result may alias body (no encoding) or the pooled buffer bb (nil when
// none was used); hand bb back to d.bodies when done with the result. A body that decodes to more than limit bytes gives
// errTooLarge, without ever holding more than limit+1 bytes: a
// decompression bomb costs a bounded read, not the process.
func (d *decoders) decode(encoding, body []byte, limit int) (out []byte, bb *bodyBuf, err error) {
	switch {
	case len(encoding) == 0 || bytes.EqualFold(encoding, []byte("identity")):
		if len(body) > limit {
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
		return d.readAll(zr, limit)
	case bytes.EqualFold(encoding, []byte("zstd")):
		zr, _ := d.zstd.Get().(*zstd.Decoder)
		if zr == nil {
			var err error
			// One goroutine per decoder: requests are decoded in parallel
			// already. The window cap bounds memory for hostile frames.
			zr, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(32<<20))
			if err != nil {
				return nil, nil, err
			}
		}
		defer func() {
			_ = zr.Reset(nil)
			d.zstd.Put(zr)
		}()
		if err := zr.Reset(bytes.NewReader(body)); err != nil {
			return nil, nil, errBadCompressed
		}
		return d.readAll(zr, limit)
	}
	return nil, nil, errUnsupportedCE
}

func (d *decoders) readAll(r io.Reader, limit int) ([]byte, *bodyBuf, error) {
	bb, n, err := d.bodies.read(r, limit)
	switch {
	case err != nil:
		d.bodies.put(bb)
		return nil, nil, errBadCompressed
	case n > int64(limit):
		d.bodies.put(bb)
		return nil, nil, errTooLarge
	}
	return bb.B, bb, nil
}
