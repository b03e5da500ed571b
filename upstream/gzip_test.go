package upstream

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
)

// TestCompress: the gzip body and the tee both hold the batch's NDJSON
// byte for byte, with small parts (gathered) and large ones (written
// straight through) mixed, and a pooled writer reused for the next batch.
func TestCompress(t *testing.T) {
	small := []byte(`{"a":"zürich"}` + "\n")
	large := bytes.Repeat([]byte(`{"b":"東京"}`+"\n"), 1000) // over 4 KiB
	b := &Batch{Parts: [][]byte{small, large, small, small, large}}
	var want bytes.Buffer
	if _, err := b.WriteTo(&want); err != nil {
		t.Fatal(err)
	}
	var gz GzipPool
	for range 2 {
		var body, tee bytes.Buffer
		if err := gz.Compress(&body, b, &tee); err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(&body)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) || !bytes.Equal(tee.Bytes(), want.Bytes()) {
			t.Errorf("gunzipped %d bytes, tee %d; want the batch's %d, byte-identical", len(got), tee.Len(), want.Len())
		}
	}
}
