package flusher

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// BenchmarkBatching measures the flusher's own work for a 100,000-row
// flush, compression aside (see upstream's BenchmarkCompress): taking
// entries into a stream's batches, merging them into sends, and collecting
// their memory for release.
//
// Recommended CLI invocation:
//
//	go test ./flusher -run '^$' -bench Batching -benchmem -count 5
func BenchmarkBatching(b *testing.B) {
	line := []byte(`{"timestamp":"2026-11-23T14:50:00.123Z","session_id":"9f1c2e4a-8b7d-4c3e-a1f2-000000000001","action":"page_hit","payload":{"path":"/zürich/東京","referrer":"https://example.com/?q=ü","ua":"Mozilla/5.0","id":12345678901234567890}}` + "\n")
	key := buffer.Key{Datasource: "ds"}
	for _, perEntry := range []int{1, 100} {
		b.Run(fmt.Sprintf("rows=100000/per_request=%d", perEntry), func(b *testing.B) {
			data := bytes.Repeat(line, perEntry)
			entries := make([]buffer.Entry, 100_000/perEntry)
			for i := range entries {
				entries[i] = buffer.Entry{Key: key, Data: data, Rows: perEntry, Accepted: int64(i)}
			}
			p := policy{rows: 100_000, bytes: 10 << 20, interval: time.Hour}
			now := time.Now()
			var r result
			b.ReportAllocs()
			for b.Loop() {
				s := &stream{key: key}
				for _, e := range entries {
					s.add(e, p, now)
				}
				s.seal()
				for bt := s.next(p); bt != nil; bt = s.next(p) {
					r.release(bt)
					s.inflight = nil
				}
				r.relRows, r.relData = 0, r.relData[:0]
			}
			b.ReportMetric(float64(b.N*100_000)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkLedger measures what the console's per-stream stats add to the
// flusher's loop for each taken request (Streams, Pause and the
// per-datasource metrics): one map lookup per request, one lock per Take.
// Compare its ns per event with BenchmarkBatching's.
//
//	go test ./flusher -run '^$' -bench 'Batching|Ledger' -benchmem
func BenchmarkLedger(b *testing.B) {
	l := newLedger(1000, newDSMetrics())
	entries := make([]buffer.Entry, 100_000)
	for i := range entries {
		entries[i] = buffer.Entry{Key: buffer.Key{Datasource: fmt.Sprintf("ds%d", i%4)}, Data: []byte("{}\n"), Rows: 1, Accepted: int64(i)}
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		l.taken(entries, now)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(entries)), "ns/event")
}
