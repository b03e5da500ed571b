package buffer

import (
	"fmt"
	"sync/atomic"
	"testing"
)

var benchEvent = []byte(`{"timestamp":"2026-11-23T14:50:00.123Z","session_id":"9f1c2e4a-8b7d-4c3e-a1f2-6d5e4c3b2a19","action":"page_hit","version":"1","payload":{"path":"/zürich/東京","referrer":"https://example.com/?q=ü","user_agent":"Mozilla/5.0","country":"CH"}}`)

// BenchmarkPut measures admission from many goroutines while one consumer
// takes and releases, as the proxy and the flusher do.
//
// Recommended CLI invocation:
//
//	go test ./buffer -run '^$' -bench BenchmarkPut -benchmem -count 5
func BenchmarkPut(b *testing.B) {
	for _, k := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("lines=%d", k), func(b *testing.B) {
			benchPut(b, Options{MaxEvents: 1 << 30, MaxBytes: 1 << 40}, k, []Key{{Datasource: "events"}})
		})
	}
}

// BenchmarkPutShare is BenchmarkPut for four streams (keys), with the fair
// share (Options.StreamShare) off, as a baseline, and on: its cost is a
// map lookup and a few counters per Put and per Release.
//
// Recommended CLI invocation:
//
//	go test ./buffer -run '^$' -bench BenchmarkPutShare -benchmem -count 5
func BenchmarkPutShare(b *testing.B) {
	keys := []Key{
		{Datasource: "events", Client: "alpha"}, {Datasource: "events", Client: "beta"},
		{Datasource: "clicks", Client: "alpha"}, {Datasource: "clicks"},
	}
	for _, share := range []float64{0, 0.5} {
		for _, k := range []int{1, 100} {
			name := fmt.Sprintf("share=%g/lines=%d", share, k)
			if share == 0 {
				name = fmt.Sprintf("share=off/lines=%d", k)
			}
			b.Run(name, func(b *testing.B) {
				benchPut(b, Options{MaxEvents: 1 << 30, MaxBytes: 1 << 40, StreamShare: share}, k, keys)
			})
		}
	}
}

// benchPut puts k-line requests from parallel goroutines, each for one of
// keys in turn, while one consumer takes and releases.
func benchPut(b *testing.B, opts Options, k int, keys []Key) {
	buf := New(opts)
	in := make([][]byte, k)
	for i := range in {
		in[i] = benchEvent
	}
	stop := make(chan struct{})
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		var got []Entry
		for {
			select {
			case <-buf.Ready():
			case <-stop:
				return
			}
			got = buf.Take(got)
			for _, e := range got {
				buf.Release(e.Key, e.Rows, e.Data)
			}
		}
	}()
	var worker atomic.Int64
	b.ReportAllocs()
	b.SetBytes(int64(k * (len(benchEvent) + 1)))
	b.RunParallel(func(pb *testing.PB) {
		key := keys[int(worker.Add(1))%len(keys)]
		for pb.Next() {
			if err := buf.Put(key, in); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*k)/b.Elapsed().Seconds(), "events/s")
	close(stop)
	<-consumed
}
