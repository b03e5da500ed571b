package limits

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkTake measures one identity's Take, both layers on, with the
// real clock (time.Now is part of it).
//
// Recommended CLI invocation:
//
//	go test ./limits -run '^$' -bench 'Take' -benchtime 200000x
func BenchmarkTake(b *testing.B) {
	l := New(Options{})
	lim := Limit{PerMinute: 1 << 50, PerDay: 1 << 60}
	key := "client-0123456789abcdef"
	b.ReportAllocs()
	for b.Loop() {
		l.Take(key, lim, 1)
	}
}

// BenchmarkTakeParallel measures Take from GOMAXPROCS goroutines over
// several identities (each goroutine walks all of them from its own
// start), beside the baseline of them all on one identity, where the
// identity's mutex is contended.
//
// Recommended CLI invocation:
//
//	go test ./limits -run '^$' -bench 'Take' -benchtime 200000x -cpu 1,2,4
func BenchmarkTakeParallel(b *testing.B) {
	for _, keys := range []int{64, 1} {
		b.Run("keys="+strconv.Itoa(keys), func(b *testing.B) {
			l := New(Options{})
			lim := Limit{PerMinute: 1 << 50, PerDay: 1 << 60}
			names := make([]string, keys)
			for i := range names {
				names[i] = "client-" + strconv.Itoa(i)
				l.Take(names[i], lim, 1)
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(17))
				for pb.Next() {
					l.Take(names[i%keys], lim, 1)
					i++
				}
			})
		})
	}
}

// BenchmarkReport measures sharing one identity's events: an operation
// is a Take of 10 events and a hundredth of a report interval over 100
// active identities (AppendReport on one replica, Merge on another), so
// ns/op is the reporting cost per identity and interval.
//
// Recommended CLI invocation:
//
//	go test ./limits -run '^$' -bench 'Report' -benchtime 200000x
func BenchmarkReport(b *testing.B) {
	clk := newClock(base.Add(30 * time.Second))
	from := New(Options{Now: clk.Now})
	to := New(Options{Now: clk.Now})
	lim := Limit{PerMinute: 1 << 50, PerDay: 1 << 60}
	names := make([]string, 100)
	for i := range names {
		names[i] = "client-" + strconv.Itoa(i)
	}
	var buf []byte
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		from.Take(names[i], lim, 10)
		if i++; i == len(names) {
			i = 0
			buf = from.AppendReport(buf[:0], "a")
			if err := to.Merge(buf, "b"); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(buf))/float64(len(names)), "report-bytes/identity")
}
