package buffer

import (
	"errors"
	"strconv"
	"testing"
	"testing/synctest"
	"time"
)

// fullDrainingAt100 fills a buffer of 1000 events and drains it at 100
// events a second for ten seconds, refilling what drains, so the measured
// rate converges; it returns the entries held. Call it inside synctest.
func fullDrainingAt100(t *testing.T, b *Buffer) []Entry {
	t.Helper()
	fill := func(n int) {
		for range n {
			if err := b.Put(Key{}, lines(`{}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	fill(1000)
	held := b.Take(nil)
	for range 10 {
		time.Sleep(time.Second)
		for _, e := range held[:100] {
			b.Release(e.Key, e.Rows, e.Data)
		}
		held = append(held[100:], b.Take(nil)...)
		fill(100)
	}
	return append(held, b.Take(nil)...)
}

// TestRetryAfterFollowsDrainRate: the Retry-After for a full buffer is the
// excess over the limit divided by the measured drain rate, within [1s, 60s].
func TestRetryAfterFollowsDrainRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 1000, MaxBytes: 1 << 30})
		if got := b.RetryAfter(10, 10); got != time.Second {
			t.Fatalf("rate unknown: got %s; want 1s", got)
		}
		fullDrainingAt100(t, b)
		// Full; 500 more events need 500 released at ~100/s: ~5s.
		if got := b.RetryAfter(500, 0); got < 4*time.Second || got > 6*time.Second {
			t.Errorf("draining at 100/s, 500 over: got %s; want about 5s", got)
		}
		if got := b.RetryAfter(1, 0); got != time.Second {
			t.Errorf("one over: got %s; want the 1s floor", got)
		}
		// Nothing drains any more: the estimate falls and hits the ceiling.
		time.Sleep(20 * time.Second)
		if got := b.RetryAfter(500, 0); got != time.Minute {
			t.Errorf("stalled: got %s; want the 60s ceiling", got)
		}
		// Stalled long enough that the rate is exactly zero: still the ceiling.
		time.Sleep(2000 * time.Second)
		if got := b.RetryAfter(500, 0); got != time.Minute {
			t.Errorf("stalled for good: got %s; want the 60s ceiling", got)
		}
	})
}

// TestRetryAfterCountsWhatIsHeld: the wait is for the excess over what is
// held now, not for the whole request.
func TestRetryAfterCountsWhatIsHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 1000, MaxBytes: 1 << 30})
		held := fullDrainingAt100(t, b)
		for _, e := range held[:300] {
			b.Release(e.Key, e.Rows, e.Data)
		}
		// 700 held, 500 more: 200 over at ~100/s.
		if got := b.RetryAfter(500, 0); got < 1500*time.Millisecond || got > 2500*time.Millisecond {
			t.Errorf("700 held, 500 more: got %s; want about 2s", got)
		}
	})
}

func TestDeny(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 100, MaxBytes: 1 << 20})
		b.Deny(Key{Token: "bad", Datasource: "ds"}, time.Now().Add(time.Minute))
		if err := b.Put(Key{Token: "bad", Datasource: "ds"}, lines(`{}`)); !errors.Is(err, ErrDenied) {
			t.Fatalf("denied token: got %v; want ErrDenied", err)
		}
		if err := b.Put(Key{Token: "good", Datasource: "ds"}, lines(`{}`)); err != nil {
			t.Fatalf("other token: %v", err)
		}
		if err := b.Put(Key{Token: "bad", Datasource: "other"}, lines(`{}`)); err != nil {
			t.Fatalf("same token, other datasource: %v", err)
		}
		if err := b.Put(Key{Datasource: "ds"}, lines(`{}`)); err != nil {
			t.Fatalf("proxy-token mode entry: %v", err)
		}
		time.Sleep(time.Minute)
		if err := b.Put(Key{Token: "bad", Datasource: "ds"}, lines(`{}`)); err != nil {
			t.Fatalf("after the TTL: got %v; want the token accepted again", err)
		}
	})
}

func TestWaiter(t *testing.T) {
	w := NewWaiter()
	w.AddPart()
	w.AddPart()
	w.AddPart()
	w.Finish(3, 1, nil)
	select {
	case <-w.Done():
		t.Fatal("done after one of two pieces")
	default:
	}
	w.Finish(0, 0, &Failure{Status: 403, Message: "no", Reason: "upstream_rejected"})
	w.Finish(0, 0, &Failure{Status: 500}) // the first failure wins
	select {
	case <-w.Done():
	default:
		t.Fatal("not done after every piece finished")
	}
	s, q, f := w.Result()
	if s != 3 || q != 1 || f == nil || f.Status != 403 {
		t.Errorf("got %d, %d, %+v; want 3, 1 and the 403", s, q, f)
	}
}

// TestRetryAfterFollowsByteDrain: when bytes, not events, are the limit,
// the wait is the excess bytes over the measured byte drain rate.
func TestRetryAfterFollowsByteDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 1000 events of 3 bytes ("{}\n") fill it exactly; 300 bytes drain a second.
		b := New(Options{MaxEvents: 1 << 20, MaxBytes: 3000})
		fullDrainingAt100(t, b)
		if got := b.RetryAfter(0, 1500); got < 4*time.Second || got > 6*time.Second {
			t.Errorf("1500 bytes over, draining ~300 B/s: got %s; want about 5s", got)
		}
	})
}

// TestDrainRateWindows: a window closed late counts as the quiet seconds it
// was, for events and bytes alike, and a window closes at one second.
func TestDrainRateWindows(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var d drainRate
	d.start(t0)
	d.add(t0.Add(500*time.Millisecond), 100, 300) // within the first second: no roll
	if d.events != 0 || d.bytes != 0 {
		t.Fatalf("rolled before a second passed: %v events/s, %v bytes/s", d.events, d.bytes)
	}
	d.roll(t0.Add(2 * time.Second)) // 2s window: keep 1/4 of the old (0), 3/4 of 50/s and 150/s
	if d.events != 37.5 || d.bytes != 112.5 {
		t.Errorf("after a 2s window: %v events/s, %v bytes/s; want 37.5 and 112.5", d.events, d.bytes)
	}
	d.add(t0.Add(2*time.Second), 10, 0)
	d.roll(t0.Add(3 * time.Second)) // exactly one second later: the window closes
	if d.winEvents != 0 {
		t.Errorf("a window of exactly 1s did not close")
	}
}

// TestNewRefusesZeroLimits: a buffer without room is a programming error.
func TestNewRefusesZeroLimits(t *testing.T) {
	for _, o := range []Options{{MaxEvents: 0, MaxBytes: 1}, {MaxEvents: 1, MaxBytes: 0}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%+v) did not panic", o)
				}
			}()
			New(o)
		}()
	}
}

// TestDenyAndVerifyTablesAreBounded: neither table grows past its bound,
// and a key already in one is updated even when it is full.
func TestDenyAndVerifyTablesAreBounded(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 1 << 20, MaxUnverifiedTokens: 1})
	until := time.Now().Add(time.Hour)
	for i := range maxDenied {
		b.Deny(Key{Token: "d" + strconv.Itoa(i), Datasource: "ds"}, until)
	}
	b.Deny(Key{Token: "one-too-many", Datasource: "ds"}, until)
	if err := b.Put(Key{Token: "one-too-many", Datasource: "ds"}, lines(`{}`)); errors.Is(err, ErrDenied) {
		t.Error("the deny table grew past maxDenied")
	}
	if err := b.Put(Key{Token: "d7", Datasource: "ds"}, lines(`{}`)); !errors.Is(err, ErrDenied) {
		t.Errorf("a remembered denial: got %v; want ErrDenied", err)
	}
	// The unverified slot is taken; verified tokens pass, up to maxVerified of them.
	for i := range maxVerified {
		b.Verify("v" + strconv.Itoa(i))
	}
	b.Verify("extra")
	if err := b.Put(Key{Token: "v9", Datasource: "ds"}, lines(`{}`)); err != nil {
		t.Fatalf("a verified token: %v", err)
	}
	if err := b.Put(Key{Token: "extra", Datasource: "ds"}, lines(`{}`)); !errors.Is(err, ErrTooManyTokens) {
		t.Errorf("a token verified past maxVerified: got %v; want it unverified (ErrTooManyTokens)", err)
	}
}
