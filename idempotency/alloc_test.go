//go:build !race

package idempotency

import (
	"strconv"
	"testing"
)

// TestReplayAllocations guards the lookup of a known key: the digest is
// hashed from a stack buffer and the table is keyed by it, so a Replay
// (and a Mismatch) allocates nothing.
func TestReplayAllocations(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir()})
	key, body := []byte("8e03978e-40d5-43e8-bc93-6894a57f9324"), sum("body")
	scope := "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
	o, p, _ := s.Begin(scope, "events", key, body)
	if o != Proceed {
		t.Fatalf("got %v; want proceed", o)
	}
	p.Done(answer(202, 10))
	var got Outcome
	n := testing.AllocsPerRun(1000, func() {
		got, _, _ = s.Begin(scope, "events", key, body)
	})
	if got != Replay || n != 0 {
		t.Fatalf("Replay: got %v with %v allocs; want replay with 0", got, n)
	}
	n = testing.AllocsPerRun(1000, func() {
		got, _, _ = s.Begin(scope, "events", key, sum("other"))
	})
	if got != Mismatch || n != 0 {
		t.Fatalf("Mismatch: got %v with %v allocs; want mismatch with 0", got, n)
	}
}

// TestNewKeyAllocations guards a new key's Begin and Done in memory: one
// entry, with the owner's Pending inside it (map growth, amortized, is
// below one per key).
func TestNewKeyAllocations(t *testing.T) {
	s := open(t, Options{MaxKeys: 1000})
	keys := make([][]byte, 2000)
	for i := range keys {
		keys[i] = strconv.AppendInt(nil, int64(i), 10)
	}
	i := 0
	n := testing.AllocsPerRun(1500, func() {
		o, p, _ := s.Begin("client", "events", keys[i], sum("body"))
		if o != Proceed {
			t.Fatalf("got %v; want proceed", o)
		}
		p.Done(answer(202, 1))
		i++
	})
	if n > 1 {
		t.Fatalf("Begin and Done of a new key: got %v allocs; want 1", n)
	}
}
