package buffer

import (
	"errors"
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
