package buffer

import (
	"fmt"
	"testing"
)

// BenchmarkPut measures admission from many goroutines while one consumer
// takes and releases, as the proxy and the flusher do.
//
// Recommended CLI invocation:
//
//	go test ./buffer -run '^$' -bench BenchmarkPut -benchmem -count 5
func BenchmarkPut(b *testing.B) {
	event := []byte(`{"timestamp":"2026-11-23T14:50:00.123Z","session_id":"9f1c2e4a-8b7d-4c3e-a1f2-6d5e4c3b2a19","action":"page_hit","version":"1","payload":{"path":"/zürich/東京","referrer":"https://example.com/?q=ü","user_agent":"Mozilla/5.0","country":"CH"}}`)
	for _, k := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("lines=%d", k), func(b *testing.B) {
			buf := New(Options{MaxEvents: 1 << 30, MaxBytes: 1 << 40})
			in := make([][]byte, k)
			for i := range in {
				in[i] = event
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
			key := Key{Datasource: "events"}
			b.ReportAllocs()
			b.SetBytes(int64(k * (len(event) + 1)))
			b.RunParallel(func(pb *testing.PB) {
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
		})
	}
}
