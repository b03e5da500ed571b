package spool

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

var benchEvent = []byte(`{"timestamp":"2026-11-23T14:50:00.123Z","session_id":"9f1c2e4a-8b7d-4c3e-a1f2-6d5e4c3b2a19","action":"page_hit","payload":{"path":"/zürich/東京","referrer":"https://example.com/?q=ü","id":12345678901234567890}}`)

// BenchmarkPut measures the accept path with the spool in front of the
// buffer, per fsync mode: events/s and the p99 of one PutWaiting (write,
// fsync wait, buffer), with a consumer delivering everything at once.
//
// Recommended CLI invocation:
//
//	go test ./spool -run '^$' -bench 'Put$' -benchtime 3s -count 3
func BenchmarkPut(b *testing.B) {
	for _, mode := range []struct {
		name string
		f    Fsync
	}{{"never", FsyncNever}, {"interval", FsyncInterval}, {"always", FsyncAlways}} {
		for _, k := range []int{1, 100} {
			b.Run(fmt.Sprintf("fsync=%s/events=%d", mode.name, k), func(b *testing.B) {
				buf := buffer.New(buffer.Options{MaxEvents: 1 << 30, MaxBytes: 1 << 40})
				s := open(b, b.TempDir(), buf, Options{Fsync: mode.f, MaxBytes: 1 << 40})
				stop := make(chan struct{})
				var consumer sync.WaitGroup
				consumer.Go(func() {
					var got []buffer.Entry
					for {
						select {
						case <-buf.Ready():
						case <-stop:
							return
						}
						got = buf.Take(got)
						for _, e := range got {
							e.Waiter.AddPart()
							e.Waiter.Finish(e.Rows, 0, nil)
							buf.Release(e.Key, e.Rows, e.Data)
						}
					}
				})
				runPuts(b, s, k)
				close(stop)
				consumer.Wait()
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkPutSpilling measures accepting during an upstream outage: the
// buffer is full and nothing is delivered, so every request is spilled,
// written to disk only (SPOOL_FSYNC=interval), for the feeder to hand
// over later.
//
//	go test ./spool -run '^$' -bench PutSpilling -benchtime 3s -count 3
func BenchmarkPutSpilling(b *testing.B) {
	for _, k := range []int{1, 100} {
		b.Run(fmt.Sprintf("events=%d", k), func(b *testing.B) {
			buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 30})
			s := open(b, b.TempDir(), buf, Options{Fsync: FsyncInterval, MaxBytes: 1 << 40})
			for buf.Len() < 1000 { // fill it: from now on everything spills
				if err := s.PutWaiting(buffer.Key{Datasource: "bench"}, [][]byte{benchEvent}, nil); err != nil {
					b.Fatal(err)
				}
			}
			runPuts(b, s, k)
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// runPuts has 32×GOMAXPROCS handlers put requests of k events and reports
// events/s and the p99 of one PutWaiting.
func runPuts(b *testing.B, s *Spool, k int) {
	in := make([][]byte, k)
	for i := range in {
		in[i] = benchEvent
	}
	var mu sync.Mutex
	var lat []time.Duration
	key := buffer.Key{Datasource: "bench"}
	b.ReportAllocs()
	b.SetBytes(int64(k * (len(benchEvent) + 1)))
	b.SetParallelism(32) // many handlers share one group commit
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			if err := s.PutWaiting(key, in, nil); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(start))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.ReportMetric(float64(b.N*k)/b.Elapsed().Seconds(), "events/s")
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}
