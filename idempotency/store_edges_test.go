package idempotency

import (
	"path/filepath"
	"testing"
)

// TestOpenCreatesDir: a Dir that does not exist yet is created, parents
// included.
func TestOpenCreatesDir(t *testing.T) {
	o := Options{Dir: filepath.Join(t.TempDir(), "state", "idempotency")}
	s := open(t, o)
	proceed(t, s, "", "ds", "k", "body").Done(answer(202, 1))
	s = reopen(t, s, o)
	mustBegin(t, s, "", "ds", "k", "body", Replay)
}

// TestEvictingTheOnlyFinishedKey: with MaxKeys 1, each new key evicts the
// one before it, again and again; the table never reports Full while a
// finished key can make room.
func TestEvictingTheOnlyFinishedKey(t *testing.T) {
	s := open(t, Options{MaxKeys: 1})
	for i, k := range []string{"k1", "k2", "k3", "k4"} {
		proceed(t, s, "", "ds", k, "body").Done(answer(202, i))
		if _, a := mustBegin(t, s, "", "ds", k, "body", Replay); a != answer(202, i) {
			t.Fatalf("%s: got %+v; want %+v", k, a, answer(202, i))
		}
	}
	if n := counter(s.met.evicted); n != 3 {
		t.Fatalf("evicted_total: got %d; want 3", n)
	}
	mustBegin(t, s, "", "ds", "k1", "body", Proceed)
}
