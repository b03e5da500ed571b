package upstream

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestCompress: the gzip (and zstd) body and the tee both hold the batch's
// NDJSON byte for byte, with small parts (gathered) and large ones
// (written straight through) mixed, and a pooled writer reused for the
// next batch.
func TestCompress(t *testing.T) {
	small := []byte(`{"a":"zürich"}` + "\n")
	large := bytes.Repeat([]byte(`{"b":"東京"}`+"\n"), 1000) // over 4 KiB
	b := &Batch{Parts: [][]byte{small, large, small, small, large}}
	var want bytes.Buffer
	if _, err := b.WriteTo(&want); err != nil {
		t.Fatal(err)
	}
	gunzip := func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }
	unzstd := func(r io.Reader) (io.Reader, error) { return zstd.NewReader(r) }
	for _, c := range []struct {
		name string
		pool interface {
			Compress(io.Writer, *Batch, io.Writer) error
		}
		reader func(io.Reader) (io.Reader, error)
	}{{"gzip", new(GzipPool), gunzip}, {"zstd", new(ZstdPool), unzstd}} {
		for range 2 {
			var body, tee bytes.Buffer
			if err := c.pool.Compress(&body, b, &tee); err != nil {
				t.Fatal(err)
			}
			zr, err := c.reader(&body)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Bytes()) || !bytes.Equal(tee.Bytes(), want.Bytes()) {
				t.Errorf("%s: decoded %d bytes, tee %d; want the batch's %d, byte-identical", c.name, len(got), tee.Len(), want.Len())
			}
		}
	}
}
