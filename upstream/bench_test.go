package upstream

import (
	"fmt"
	"io"
	"testing"

	"github.com/tbproxy/tbproxy/buffer"
)

// BenchmarkCompress measures turning a batch into the gzip'd NDJSON body
// sent upstream (what a 100,000-row flush costs), with the pooled writer.
//
// Recommended CLI invocation:
//
//	go test ./upstream -run '^$' -bench Compress -benchmem -count 5
func BenchmarkCompress(b *testing.B) {
	for _, enc := range []struct {
		name string
		c    interface {
			Compress(io.Writer, *Batch, io.Writer) error
		}
	}{{"gzip", new(GzipPool)}, {"zstd", new(ZstdPool)}} {
		for _, perEntry := range []int{1, 100} {
			b.Run(fmt.Sprintf("%s/rows=100000/per_request=%d", enc.name, perEntry), func(b *testing.B) {
				benchCompress(b, enc.c, perEntry)
			})
		}
	}
}

func benchCompress(b *testing.B, gz interface {
	Compress(io.Writer, *Batch, io.Writer) error
}, perEntry int) {
	{
		{
			batch := &Batch{Key: buffer.Key{Datasource: "ds"}}
			for i := 0; i < 100_000; i += perEntry {
				var data []byte
				for j := range perEntry {
					data = fmt.Appendf(data, `{"timestamp":"2026-11-23T14:50:%02d.123Z","session_id":"9f1c2e4a-8b7d-4c3e-a1f2-%012d","action":"page_hit","payload":{"path":"/zürich/東京","referrer":"https://example.com/?q=ü","ua":"Mozilla/5.0","id":12345678901234567890}}`+"\n", (i+j)%60, i+j)
				}
				batch.Parts = append(batch.Parts, data)
				batch.Rows += perEntry
				batch.Bytes += len(data)
			}
			var out countingWriter
			b.ReportAllocs()
			b.SetBytes(int64(batch.Bytes))
			for b.Loop() {
				out = 0
				if err := gz.Compress(&out, batch, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch.Rows)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(batch.Bytes)/float64(out), "ratio")
		}
	}
}

type countingWriter int

func (w *countingWriter) Write(p []byte) (int, error) {
	*w += countingWriter(len(p))
	return len(p), nil
}

var _ io.Writer = (*countingWriter)(nil)
