package queue

import (
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/natstest"
)

// BenchmarkAccept compares the accept path's store: the JetStream queue
// (publish, wait for the PubAck) against the in-memory buffer alone, with
// 64 concurrent writers per core (128 on two cores) of ~240 B events. It
// reports events/s and the p99 latency of one PutWaiting.
//
// Recommended CLI invocation:
//
//	go test ./queue -run '^$' -bench Accept -benchtime 3s
func BenchmarkAccept(b *testing.B) {
	ns := natstest.Start(b)
	line := []byte(`{"timestamp":"2026-11-23T10:00:00Z","session_id":"9c1d2f3e-4b5a-6c7d-8e9f-0a1b2c3d4e5f","action":"page_hit","version":"1","payload":{"path":"/pricing","referrer":"https://www.google.com/","locale":"en-US","agent":"Mozilla/5.0"}}`)
	for _, events := range []int{1, 10, 100} {
		lines := make([][]byte, events)
		for i := range lines {
			lines[i] = line
		}
		b.Run(fmt.Sprintf("store=buffer/events=%d", events), func(b *testing.B) {
			buf := buffer.New(buffer.Options{MaxEvents: 1 << 30, MaxBytes: 1 << 62})
			stop := drain(buf)
			defer stop()
			run(b, events, func() error { return buf.Put(buffer.Key{Datasource: "bench"}, lines) })
		})
		b.Run(fmt.Sprintf("store=jetstream/events=%d", events), func(b *testing.B) {
			buf := buffer.New(buffer.Options{MaxEvents: 1 << 20, MaxBytes: 1 << 30})
			q, err := Open(buf, Options{URLs: ns.URL(), Stream: fmt.Sprintf("BENCH%d", events), Subject: fmt.Sprintf("bench%d", events),
				MaxBytes: 1 << 30}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			run(b, events, func() error { return q.PutWaiting(buffer.Key{Datasource: "bench"}, lines, nil) })
			// Empty the stream for the next sub-benchmark's run.
			_ = q.js.DeleteStream(b.Context(), q.opts.Stream)
		})
	}
}

// BenchmarkPutWaitingGroupCommit measures the accept path at one ~240 B
// event per request from 64 concurrent callers, with group commit and with
// one message per request (NoGroupCommit, the path before it), against a
// local nats-server: requests/s, the p99 of one PutWaiting and allocations
// per request (this process's; the server's are its own).
//
// Recommended CLI invocation:
//
//	go test ./queue -run '^$' -bench PutWaitingGroupCommit -benchtime 3s
func BenchmarkPutWaitingGroupCommit(b *testing.B) {
	ns := natstest.Start(b)
	lines := [][]byte{[]byte(`{"timestamp":"2026-11-23T10:00:00Z","session_id":"9c1d2f3e-4b5a-6c7d-8e9f-0a1b2c3d4e5f","action":"page_hit","version":"1","payload":{"path":"/pricing","referrer":"https://www.google.com/","locale":"en-US","agent":"Mozilla/5.0"}}`)}
	callers := max(1, 64/runtime.GOMAXPROCS(0)) // RunParallel starts this many per GOMAXPROCS
	for i, mode := range []string{"one-message-per-request", "group-commit"} {
		b.Run("mode="+mode, func(b *testing.B) {
			buf := buffer.New(buffer.Options{MaxEvents: 1 << 20, MaxBytes: 1 << 30})
			q, err := Open(buf, Options{URLs: ns.URL(), Stream: fmt.Sprintf("GROUP%d", i), Subject: fmt.Sprintf("group%d", i),
				MaxBytes: 1 << 30, NoGroupCommit: i == 0}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			b.ReportAllocs()
			runCallers(b, callers, 1, func() error { return q.PutWaiting(buffer.Key{Datasource: "bench"}, lines, nil) })
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			_ = q.js.DeleteStream(b.Context(), q.opts.Stream)
		})
	}
}

// run calls put from 64 goroutines per GOMAXPROCS and reports events/s and
// p99.
func run(b *testing.B, events int, put func() error) { runCallers(b, 64, events, put) }

// runCallers calls put from parallelism goroutines per GOMAXPROCS and
// reports events/s and p99.
func runCallers(b *testing.B, parallelism, events int, put func() error) {
	var mu sync.Mutex
	var all []time.Duration
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var lat []time.Duration
		for pb.Next() {
			start := time.Now()
			if err := put(); err != nil {
				b.Error(err)
				return
			}
			lat = append(lat, time.Since(start))
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	b.StopTimer()
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	b.ReportMetric(float64(b.N*events)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}

// drain is the flusher's part for the in-memory benchmark: it takes and
// releases everything, so the buffer never fills.
func drain(buf *buffer.Buffer) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var taken []buffer.Entry
		for {
			select {
			case <-done:
				return
			case <-buf.Ready():
			}
			taken = buf.Take(taken)
			for _, e := range taken {
				buf.Release(e.Key, e.Rows, e.Data)
			}
		}
	})
	return func() { close(done); wg.Wait() }
}
