package idempotency

import (
	"strconv"
	"testing"
)

// benchScope is a hashed token, the longest scope the proxy sends.
const benchScope = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"

// BenchmarkDigest is the baseline every lookup pays: hashing scope,
// datasource and a UUID key.
//
// Recommended CLI invocation:
//
//	go test -run xxx -bench 'Digest|Begin|Replay' -benchmem ./idempotency
func BenchmarkDigest(b *testing.B) {
	key := []byte("8e03978e-40d5-43e8-bc93-6894a57f9324")
	b.ReportAllocs()
	for b.Loop() {
		_ = digest(benchScope, "events", key)
	}
}

// BenchmarkBegin measures a new key's Begin and Done (with its record
// appended to the log for dir, and synced for dir-fsync), in steady state:
// past MaxKeys, each new key evicts the oldest.
//
// Recommended CLI invocation:
//
//	go test -run xxx -bench 'Digest|Begin|Replay' -benchmem ./idempotency
func BenchmarkBegin(b *testing.B) {
	for _, tc := range []struct {
		name       string
		dir, fsync bool
	}{{"memory", false, false}, {"dir", true, false}, {"dir-fsync", true, true}} {
		b.Run(tc.name, func(b *testing.B) {
			o := Options{MaxKeys: 10_000, Fsync: tc.fsync}
			if tc.dir {
				o.Dir = b.TempDir()
			}
			s := open(b, o)
			body := sum("body")
			var key []byte
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				key = strconv.AppendInt(append(key[:0], "key-"...), int64(i), 10)
				i++
				o, p, _ := s.Begin(benchScope, "events", key, body)
				if o != Proceed {
					b.Fatalf("got %v; want proceed", o)
				}
				p.Done(Answer{Status: 202, Successful: 100})
			}
		})
	}
}

// BenchmarkReplay measures the lookup of a finished key, serial and from
// every CPU at once (one lock guards the table).
//
// Recommended CLI invocation:
//
//	go test -run xxx -bench 'Digest|Begin|Replay' -benchmem ./idempotency
func BenchmarkReplay(b *testing.B) {
	const n = 1000
	s := open(b, Options{})
	body := sum("body")
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = strconv.AppendInt([]byte("key-"), int64(i), 10)
		_, p, _ := s.Begin(benchScope, "events", keys[i], body)
		p.Done(Answer{Status: 202, Successful: 100})
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if o, _, _ := s.Begin(benchScope, "events", keys[i%n], body); o != Replay {
				b.Fatalf("got %v; want replay", o)
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if o, _, _ := s.Begin(benchScope, "events", keys[i%n], body); o != Replay {
					b.Errorf("got %v; want replay", o)
					return
				}
				i++
			}
		})
	})
}
