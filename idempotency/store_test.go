package idempotency

import (
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// clock is a test clock that moves only when told.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time        { return time.Unix(0, c.ns.Load()) }
func (c *clock) Add(d time.Duration)   { c.ns.Add(int64(d)) }
func sum(body string) [32]byte         { return Fingerprint([]byte(body)) }
func answer(status, ok int) Answer     { return Answer{Status: status, Successful: ok} }
func keyOf(s string) []byte            { return []byte(s) }
func counter(c prometheus.Counter) int { return int(testutil.ToFloat64(c)) }
func outcomes(s *Store, o Outcome) int { return counter(s.met.requests[o]) }
func mustBegin(t *testing.T, s *Store, scope, ds, key, body string, want Outcome) (*Pending, Answer) {
	t.Helper()
	o, p, a := s.Begin(scope, ds, keyOf(key), sum(body))
	if o != want {
		t.Fatalf("Begin(%q, %q, %q): got %v; want %v", scope, ds, key, o, want)
	}
	if (p != nil) != (o == Proceed || o == InFlight) {
		t.Fatalf("Begin(%q, %q, %q) = %v with Pending %v", scope, ds, key, o, p)
	}
	return p, a
}

// proceed begins a key that must be new.
func proceed(t *testing.T, s *Store, scope, ds, key, body string) *Pending {
	t.Helper()
	p, _ := mustBegin(t, s, scope, ds, key, body, Proceed)
	return p
}

// open opens a store that the test closes.
func open(t testing.TB, o Options) *Store {
	t.Helper()
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestProceedStoredDoneReplay(t *testing.T) {
	c := newClock()
	s := open(t, Options{Now: c.Now, Dir: t.TempDir()})
	p, _ := mustBegin(t, s, "client", "events", "k1", "body", Proceed)
	if err := p.Stored(answer(202, 3)); err != nil {
		t.Fatal(err)
	}
	want := Answer{Status: 202, Successful: 3, Quarantined: 1}
	p.Done(want)
	_, got := mustBegin(t, s, "client", "events", "k1", "body", Replay)
	if got != want {
		t.Fatalf("got %+v; want %+v", got, want)
	}
	mustBegin(t, s, "client", "events", "k1", "other body", Mismatch)
	mustBegin(t, s, "client", "events", "k1", "body", Replay)
	for o, n := range map[Outcome]int{Proceed: 1, Replay: 2, Mismatch: 1, InFlight: 0, Full: 0} {
		if got := outcomes(s, o); got != n {
			t.Errorf("requests_total{outcome=%q}: got %d; want %d", o, got, n)
		}
	}
}

func TestKeysAreScoped(t *testing.T) {
	s := open(t, Options{})
	proceed(t, s, "a", "ds", "k", "body").Done(answer(202, 1))
	for _, tc := range []struct{ name, scope, ds, key string }{
		{"other scope", "b", "ds", "k"},
		{"no scope", "", "ds", "k"},
		{"other datasource", "a", "ds2", "k"},
		{"other key", "a", "ds", "k2"},
		// The length prefixes keep the parts apart: ("a", "dsk") is not ("ad", "sk").
		{"shifted boundary", "ad", "s", "k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := mustBegin(t, s, tc.scope, tc.ds, tc.key, "other body", Proceed)
			p.Done(answer(202, 2))
		})
	}
	if _, a := mustBegin(t, s, "a", "ds", "k", "body", Replay); a != answer(202, 1) {
		t.Fatalf("got %+v; want %+v", a, answer(202, 1))
	}
}

func TestInFlightWaitGetsDone(t *testing.T) {
	s := open(t, Options{})
	p, _ := mustBegin(t, s, "", "ds", "k", "body", Proceed)
	w, _ := mustBegin(t, s, "", "ds", "k", "body", InFlight)
	mustBegin(t, s, "", "ds", "k", "another body", Mismatch)
	type result struct {
		a            Answer
		ok, timedOut bool
	}
	got := make(chan result, 2)
	for range 2 {
		go func() {
			a, ok, timedOut := w.Wait(time.Minute)
			got <- result{a, ok, timedOut}
		}()
	}
	want := Answer{Status: 502, Error: "upstream said no"}
	p.Done(want)
	for range 2 {
		select {
		case r := <-got:
			if r != (result{want, true, false}) {
				t.Fatalf("Wait: got %+v; want %+v", r, result{want, true, false})
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Wait did not return after Done")
		}
	}
	// A Wait after the end answers at once.
	if a, ok, timedOut := w.Wait(0); a != want || !ok || timedOut {
		t.Fatalf("late Wait: got %+v, %v, %v; want %+v, true, false", a, ok, timedOut, want)
	}
}

func TestForgetWakesWaiters(t *testing.T) {
	s := open(t, Options{})
	p, _ := mustBegin(t, s, "", "ds", "k", "body", Proceed)
	w, _ := mustBegin(t, s, "", "ds", "k", "body", InFlight)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if a, ok, timedOut := w.Wait(time.Minute); a != (Answer{}) || ok || timedOut {
			t.Errorf("Wait after Forget: got %+v, %v, %v; want zero, false, false", a, ok, timedOut)
		}
	}()
	p.Forget()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after Forget")
	}
	if n := s.keys(); n != 0 {
		t.Fatalf("keys after Forget: got %v; want 0", n)
	}
	// The key is free: even another body may take it now.
	mustBegin(t, s, "", "ds", "k", "another body", Proceed)
}

func TestWaitTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := open(t, Options{})
		p, _ := mustBegin(t, s, "", "ds", "k", "body", Proceed)
		w, _ := mustBegin(t, s, "", "ds", "k", "body", InFlight)
		start := time.Now()
		if a, ok, timedOut := w.Wait(3 * time.Second); a != (Answer{}) || ok || !timedOut {
			t.Fatalf("Wait: got %+v, %v, %v; want zero, false, true", a, ok, timedOut)
		}
		if el := time.Since(start); el != 3*time.Second {
			t.Fatalf("Wait returned after %v; want 3s", el)
		}
		if _, ok, timedOut := w.Wait(0); ok || !timedOut {
			t.Fatalf("Wait(0): got ok=%v, timedOut=%v; want false, true", ok, timedOut)
		}
		p.Done(answer(202, 1))
		mustBegin(t, s, "", "ds", "k", "body", Replay)
	})
}

func TestPendingEndsOnce(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir()})
	p, _ := mustBegin(t, s, "", "ds", "done", "body", Proceed)
	w, _ := mustBegin(t, s, "", "ds", "done", "body", InFlight)
	w.Done(answer(500, 0)) // a waiter's handle ends nothing
	w.Forget()
	if err := w.Stored(answer(500, 0)); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s, "", "ds", "done", "body", InFlight)
	p.Done(answer(202, 1))
	p.Done(answer(500, 0))
	p.Forget()
	if err := p.Stored(answer(500, 0)); err != nil {
		t.Fatal(err)
	}
	if _, a := mustBegin(t, s, "", "ds", "done", "body", Replay); a != answer(202, 1) {
		t.Fatalf("got %+v; want the first Done's %+v", a, answer(202, 1))
	}

	p, _ = mustBegin(t, s, "", "ds", "forgotten", "body", Proceed)
	p.Forget()
	q, _ := mustBegin(t, s, "", "ds", "forgotten", "body", Proceed)
	p.Done(answer(500, 0)) // the old handle must not end the new request
	p.Forget()
	mustBegin(t, s, "", "ds", "forgotten", "body", InFlight)
	q.Done(answer(202, 2))
	if _, a := mustBegin(t, s, "", "ds", "forgotten", "body", Replay); a != answer(202, 2) {
		t.Fatalf("got %+v; want %+v", a, answer(202, 2))
	}
}

func TestWindow(t *testing.T) {
	c := newClock()
	s := open(t, Options{Now: c.Now, Window: time.Minute})
	p, _ := mustBegin(t, s, "", "ds", "k", "body", Proceed)
	c.Add(time.Hour) // in flight, a key never expires
	mustBegin(t, s, "", "ds", "k", "body", InFlight)
	p.Done(answer(202, 1))
	c.Add(time.Minute - 1)
	mustBegin(t, s, "", "ds", "k", "body", Replay)
	c.Add(1)
	proceed(t, s, "", "ds", "k", "other body").Done(answer(202, 2))
	if n := counter(s.met.evicted); n != 0 {
		t.Fatalf("evicted_total: got %d; want 0 (expiry is no eviction)", n)
	}
}

func TestExpiryIsLazyAndBounded(t *testing.T) {
	c := newClock()
	s := open(t, Options{Now: c.Now, Window: time.Minute})
	for i := range 10 {
		proceed(t, s, "", "ds", string(rune('a'+i)), "body").Done(answer(202, 1))
	}
	c.Add(time.Minute)
	mustBegin(t, s, "", "ds", "new", "body", Proceed)
	if got, want := s.keys(), float64(10-expireBatch+1); got != want {
		t.Fatalf("keys after one Begin: got %v; want %v", got, want)
	}
}

func TestMaxKeysEvictsOldestFinished(t *testing.T) {
	c := newClock()
	s := open(t, Options{Now: c.Now, MaxKeys: 3})
	p0, _ := mustBegin(t, s, "", "ds", "in-flight", "body", Proceed)
	proceed(t, s, "", "ds", "k1", "body").Done(answer(202, 1))
	c.Add(time.Second)
	proceed(t, s, "", "ds", "k2", "body").Done(answer(202, 2))
	c.Add(time.Second)
	proceed(t, s, "", "ds", "k3", "body").Done(answer(202, 3)) // evicts k1, the oldest finished
	if n := counter(s.met.evicted); n != 1 {
		t.Fatalf("evicted_total: got %d; want 1", n)
	}
	mustBegin(t, s, "", "ds", "k2", "body", Replay)
	mustBegin(t, s, "", "ds", "k3", "body", Replay)
	mustBegin(t, s, "", "ds", "in-flight", "body", InFlight)
	proceed(t, s, "", "ds", "k1", "body").Done(answer(202, 1)) // evicts k2
	mustBegin(t, s, "", "ds", "k2", "body", Proceed)           // evicts k3
	if n := counter(s.met.evicted); n != 3 {
		t.Fatalf("evicted_total: got %d; want 3", n)
	}
	p0.Done(answer(202, 0))
}

func TestFullOfInFlightKeys(t *testing.T) {
	s := open(t, Options{MaxKeys: 2})
	p1, _ := mustBegin(t, s, "", "ds", "k1", "body", Proceed)
	p2, _ := mustBegin(t, s, "", "ds", "k2", "body", Proceed)
	mustBegin(t, s, "", "ds", "k3", "body", Full)
	mustBegin(t, s, "", "ds", "k1", "body", InFlight) // known keys are still found
	p1.Forget()
	p3, _ := mustBegin(t, s, "", "ds", "k3", "body", Proceed)
	mustBegin(t, s, "", "ds", "k4", "body", Full)
	p2.Done(answer(202, 2))
	mustBegin(t, s, "", "ds", "k4", "body", Proceed) // evicts k2
	p3.Done(answer(202, 3))
	if n, f := counter(s.met.evicted), outcomes(s, Full); n != 1 || f != 2 {
		t.Fatalf("evicted_total, requests_total{full}: got %d, %d; want 1, 2", n, f)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := open(t, Options{Registerer: reg, MaxKeys: 1})
	p, _ := mustBegin(t, s, "", "ds", "k", "body", Proceed)
	mustBegin(t, s, "", "ds", "k", "body", InFlight)
	mustBegin(t, s, "", "ds", "x", "body", Full)
	p.Done(answer(202, 1))
	mustBegin(t, s, "", "ds", "k", "body", Replay)
	mustBegin(t, s, "", "ds", "k", "other", Mismatch)
	mustBegin(t, s, "", "ds", "x", "body", Proceed)
	want := `
# HELP tbproxy_idempotency_evicted_total Finished idempotency keys forgotten before their window ended, oldest first, to stay within the configured maximum of keys; a retry of one is stored again.
# TYPE tbproxy_idempotency_evicted_total counter
tbproxy_idempotency_evicted_total 1
# HELP tbproxy_idempotency_keys Idempotency keys remembered, in flight and finished, up to the configured maximum.
# TYPE tbproxy_idempotency_keys gauge
tbproxy_idempotency_keys 1
# HELP tbproxy_idempotency_requests_total Requests with an Idempotency-Key, by what the store answered: proceed (a new key), replay (seen with the same body), mismatch (seen with another body: 422), in_flight (the first request with the key has not finished), full (every remembered key is in flight: 503).
# TYPE tbproxy_idempotency_requests_total counter
tbproxy_idempotency_requests_total{outcome="full"} 1
tbproxy_idempotency_requests_total{outcome="in_flight"} 1
tbproxy_idempotency_requests_total{outcome="mismatch"} 1
tbproxy_idempotency_requests_total{outcome="proceed"} 2
tbproxy_idempotency_requests_total{outcome="replay"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"tbproxy_idempotency_evicted_total", "tbproxy_idempotency_keys", "tbproxy_idempotency_requests_total"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Registerer: reg}); err == nil {
		t.Fatal("a second store on one registry: got no error; want a registration error")
	}
}

func TestValidKey(t *testing.T) {
	f := func(key string, want bool) {
		t.Helper()
		if got := ValidKey([]byte(key)); got != want {
			t.Fatalf("ValidKey(%q): got %v; want %v", key, got, want)
		}
	}
	f("", false)
	f("a", true)
	f("8e03978e-40d5-43e8-bc93-6894a57f9324", true)
	f(`"8e03978e-40d5-43e8-bc93-6894a57f9324"`, true) // the draft's sf-string, quotes kept
	f(" ~", true)
	f(strings.Repeat("k", MaxKeyBytes), true)
	f(strings.Repeat("k", MaxKeyBytes+1), false)
	f("tab\there", false)
	f("new\nline", false)
	f("del\x7f", false)
	f("nul\x00", false)
	f("é", false)
}

func TestErrorIsCut(t *testing.T) {
	s := open(t, Options{})
	long := strings.Repeat("x", MaxErrorBytes-1) + "é and more" // é straddles the limit
	proceed(t, s, "", "ds", "k", "body").Done(Answer{Status: 400, Error: long})
	_, a := mustBegin(t, s, "", "ds", "k", "body", Replay)
	if want := strings.Repeat("x", MaxErrorBytes-1); a.Error != want {
		t.Fatalf("got %q; want %q", a.Error, want)
	}
}
