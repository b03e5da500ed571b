package limits

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is an injected clock, safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func newClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.Set(t)
	return c
}

func (c *fakeClock) Now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// base is the start of a Unix minute, 12:00 UTC.
var base = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

func newTestLimiter(t *testing.T, at time.Time, maxKeys int) (*Limiter, *fakeClock) {
	t.Helper()
	c := newClock(at)
	return New(Options{MaxKeys: maxKeys, Now: c.Now}), c
}

// mustTake takes n events and fails the test unless they are admitted.
func mustTake(t *testing.T, l *Limiter, key string, lim Limit, n int64) Decision {
	t.Helper()
	d := l.Take(key, lim, n)
	if !d.Allowed {
		t.Fatalf("Take(%d) under %+v: %+v; want allowed", n, lim, d)
	}
	return d
}

// checkRetryAfter checks that d, the refusal of n events at the clock's
// time, waits exactly d.RetryAfter: the same request is refused 1 ms and
// 1 ns before it and admitted at it. It leaves the clock there, with the
// request admitted.
func checkRetryAfter(t *testing.T, l *Limiter, c *fakeClock, key string, lim Limit, n int64, d Decision) {
	t.Helper()
	if d.Allowed || d.Never || d.Untracked || d.RetryAfter < time.Millisecond || d.Reset != d.RetryAfter {
		t.Fatalf("got %+v; want a refusal with RetryAfter >= 1ms and Reset = RetryAfter", d)
	}
	start := c.Now()
	for _, early := range []time.Duration{time.Millisecond, time.Nanosecond} {
		c.Set(start.Add(d.RetryAfter - early))
		if got := l.Take(key, lim, n); got.Allowed {
			t.Fatalf("at RetryAfter (%s) − %s: allowed; want refused", d.RetryAfter, early)
		}
	}
	c.Set(start.Add(d.RetryAfter))
	if got := l.Take(key, lim, n); !got.Allowed {
		t.Fatalf("at RetryAfter (%s): %+v; want allowed", d.RetryAfter, got)
	}
}

func TestLayerString(t *testing.T) {
	for l, want := range map[Layer]string{Minute: "minute", Day: "day", 7: "Layer(7)"} {
		if got := l.String(); got != want {
			t.Errorf("got %q; want %q", got, want)
		}
	}
}

func TestLimitOff(t *testing.T) {
	for _, c := range []struct {
		lim  Limit
		want bool
	}{{Limit{}, true}, {Limit{-1, 0}, true}, {Limit{1, 0}, false}, {Limit{0, 1}, false}} {
		if got := c.lim.Off(); got != c.want {
			t.Errorf("%+v.Off() = %v; want %v", c.lim, got, c.want)
		}
	}
	l, _ := newTestLimiter(t, base, 0)
	if d := l.Take("k", Limit{}, 1e9); d != (Decision{Allowed: true}) {
		t.Errorf("Take with limits off: %+v; want allowed", d)
	}
	if l.Len() != 0 {
		t.Errorf("Len() = %d after Take with limits off; want 0", l.Len())
	}
}

// TestMinuteRetryAfter fills the minute layer exactly to its limit at
// several points of the window and checks the refusal of the next request
// and its exact wait, solved from the sliding estimate.
func TestMinuteRetryAfter(t *testing.T) {
	lim := Limit{PerMinute: 100}
	for _, c := range []struct {
		name  string
		fill  func(t *testing.T, l *Limiter, c *fakeClock)
		n     int64
		wait  time.Duration // RetryAfter
		left  int64         // Remaining of the refusal
		after time.Duration // from base, when the refusal happens
	}{
		{
			// The next minute starts with prev = 100: 100×(1−f/60s)+1 <= 100
			// at f = 0.6s.
			name: "full at 0s",
			fill: func(t *testing.T, l *Limiter, c *fakeClock) { mustTake(t, l, "k", lim, 100) },
			n:    1, wait: 60*time.Second + 600*time.Millisecond,
		},
		{
			name: "full at 10s",
			fill: func(t *testing.T, l *Limiter, c *fakeClock) {
				c.Add(10 * time.Second)
				mustTake(t, l, "k", lim, 100)
			},
			n: 1, wait: 50*time.Second + 600*time.Millisecond, after: 10 * time.Second,
		},
		{
			name: "full at 59.9s",
			fill: func(t *testing.T, l *Limiter, c *fakeClock) {
				c.Add(59*time.Second + 900*time.Millisecond)
				mustTake(t, l, "k", lim, 100)
			},
			n: 1, wait: 700 * time.Millisecond, after: 59*time.Second + 900*time.Millisecond,
		},
		{
			// prev = 100 weighs 50 at 30s; after 50 more, 1 fits once
			// 100×(1−e/60s) <= 49: e = 30.6s.
			name: "previous minute full, filled at 30s",
			fill: func(t *testing.T, l *Limiter, c *fakeClock) {
				c.Add(5 * time.Second)
				mustTake(t, l, "k", lim, 100)
				c.Set(base.Add(time.Minute + 30*time.Second))
				mustTake(t, l, "k", lim, 50)
			},
			n: 1, wait: 600 * time.Millisecond, after: time.Minute + 30*time.Second,
		},
		{
			// prev = 40 weighs 33.3 at 10s, cur = 60: room 6. Ten fit once
			// 40×(1−e/60s) <= 30: e = 15s, within this minute.
			name: "ten events, solved within the minute",
			fill: func(t *testing.T, l *Limiter, c *fakeClock) {
				c.Add(50 * time.Second)
				mustTake(t, l, "k", lim, 40)
				c.Set(base.Add(time.Minute + 10*time.Second))
				mustTake(t, l, "k", lim, 60)
			},
			n: 10, wait: 5 * time.Second, left: 6, after: time.Minute + 10*time.Second,
		},
		{
			// prev = 50 weighs 33.3 at 20s, cur = 66: 40 do not fit before
			// the next minute (66+40 > 100), where 66×(1−f/60s) <= 60 at
			// f = 60s − ⌊60×60s/66⌋ns = 5.454545455s: 40s + f.
			name: "forty events, solved in the next minute",
			fill: func(t *testing.T, l *Limiter, c *fakeClock) {
				c.Add(30 * time.Second)
				mustTake(t, l, "k", lim, 50)
				c.Set(base.Add(time.Minute + 20*time.Second))
				mustTake(t, l, "k", lim, 66)
			},
			n: 40, wait: 45_454_545_455, after: time.Minute + 20*time.Second,
		},
		{
			// n = limit: only an empty estimate fits, two minutes on.
			name: "a request of the whole limit",
			fill: func(t *testing.T, l *Limiter, c *fakeClock) {
				c.Add(20 * time.Second)
				mustTake(t, l, "k", lim, 1)
			},
			n: 100, wait: 100 * time.Second, left: 99, after: 20 * time.Second,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, clk := newTestLimiter(t, base, 0)
			c.fill(t, l, clk)
			if got := clk.Now().Sub(base); got != c.after {
				t.Fatalf("refusing at base+%s; want base+%s", got, c.after)
			}
			d := l.Take("k", lim, c.n)
			want := Decision{Layer: Minute, Limit: 100, Remaining: c.left, RetryAfter: c.wait, Reset: c.wait}
			if d != want {
				t.Fatalf("got %+v; want %+v", d, want)
			}
			checkRetryAfter(t, l, clk, "k", lim, c.n, d)
		})
	}
}

// TestMinuteRetryAfterSweep checks the exact wait from every 7.3 s of a
// minute, with a previous window and a current one partly used.
func TestMinuteRetryAfterSweep(t *testing.T) {
	lim := Limit{PerMinute: 1000, PerDay: 1_000_000}
	for at := time.Duration(0); at < time.Minute; at += 7300 * time.Millisecond {
		for _, n := range []int64{1, 7, 250} {
			l, clk := newTestLimiter(t, base.Add(13*time.Second), 0)
			mustTake(t, l, "k", lim, 700)
			clk.Set(base.Add(time.Minute + at))
			for {
				d := l.Take("k", lim, n)
				if !d.Allowed {
					if d.Layer != Minute || d.Limit != 1000 || d.Remaining >= n {
						t.Fatalf("at %s, n %d: got %+v; want a minute refusal with Remaining < n", at, n, d)
					}
					checkRetryAfter(t, l, clk, "k", lim, n, d)
					break
				}
			}
		}
	}
}

// TestDayCrossesMidnight fills the day layer before midnight UTC: the
// next request waits exactly until 00:00.
func TestDayCrossesMidnight(t *testing.T) {
	at := time.Date(2026, 3, 10, 23, 59, 30, 0, time.UTC)
	lim := Limit{PerMinute: 1000, PerDay: 100}
	l, clk := newTestLimiter(t, at, 0)
	if got, want := mustTake(t, l, "k", lim, 100), (Decision{Allowed: true, Layer: Day, Limit: 100, Remaining: 0, Reset: 30 * time.Second}); got != want {
		t.Fatalf("got %+v; want %+v", got, want)
	}
	d := l.Take("k", lim, 1)
	if want := (Decision{Layer: Day, Limit: 100, RetryAfter: 30 * time.Second, Reset: 30 * time.Second}); d != want {
		t.Fatalf("got %+v; want %+v", d, want)
	}
	checkRetryAfter(t, l, clk, "k", lim, 1, d)
	// The minute layer still counts the 100 from before midnight.
	if got, want := l.Take("k", lim, 1), (Decision{Allowed: true, Layer: Day, Limit: 100, Remaining: 98, Reset: 24 * time.Hour}); got != want {
		t.Errorf("after midnight: got %+v; want %+v", got, want)
	}
}

// TestBothLayersRefuse: the layer with the later wait (here the day) is
// reported, so the headers describe the wait, and RetryAfter passes both.
func TestBothLayersRefuse(t *testing.T) {
	lim := Limit{PerMinute: 100, PerDay: 100}
	l, clk := newTestLimiter(t, base.Add(10*time.Second), 0)
	mustTake(t, l, "k", lim, 100)
	d := l.Take("k", lim, 1)
	wait := 12*time.Hour - 10*time.Second
	if want := (Decision{Layer: Day, Limit: 100, RetryAfter: wait, Reset: wait}); d != want {
		t.Fatalf("got %+v; want %+v", d, want)
	}
	checkRetryAfter(t, l, clk, "k", lim, 1, d)
}

func TestNever(t *testing.T) {
	l, _ := newTestLimiter(t, base, 0)
	for _, c := range []struct {
		lim  Limit
		want Decision
	}{
		{Limit{PerMinute: 10, PerDay: 100}, Decision{Layer: Minute, Limit: 10, Remaining: 10, Never: true}},
		{Limit{PerMinute: 100, PerDay: 10}, Decision{Layer: Day, Limit: 10, Remaining: 10, Never: true}},
		{Limit{PerDay: 10}, Decision{Layer: Day, Limit: 10, Remaining: 10, Never: true}},
	} {
		if got := l.Take("k", c.lim, 11); got != c.want {
			t.Errorf("11 events under %+v: got %+v; want %+v", c.lim, got, c.want)
		}
		mustTake(t, l, "k", c.lim, 10) // a refusal counts nothing
		l.Refund("k", 10)
	}
}

func TestRefund(t *testing.T) {
	lim := Limit{PerMinute: 100, PerDay: 150}
	l, clk := newTestLimiter(t, base.Add(59*time.Second), 0)
	mustTake(t, l, "k", lim, 100)
	if d := l.Take("k", lim, 10); d.Allowed {
		t.Fatalf("got %+v; want refused", d)
	}
	l.Refund("k", 10)
	if got, want := mustTake(t, l, "k", lim, 10), (Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 0, Reset: time.Second}); got != want {
		t.Fatalf("after Refund: got %+v; want %+v", got, want)
	}

	// After the minute boundary the refund comes from the previous
	// minute, where the events were taken: the estimate drops to 0.
	clk.Add(2 * time.Second)
	l.Refund("k", 100)
	if got, want := mustTake(t, l, "k", lim, 100), (Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 0, Reset: 59 * time.Second}); got != want {
		t.Fatalf("after Refund across the minute: got %+v; want %+v", got, want)
	}
	// The day counted 100 (refunded), then 100: 100 of 150.
	l.Refund("k", 1000) // more than taken: back to nothing, not below
	if got, want := mustTake(t, l, "k", lim, 100), (Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 0, Reset: 59 * time.Second}); got != want {
		t.Fatalf("after a Refund of more than taken: got %+v; want %+v", got, want)
	}
	if d := l.Take("k", Limit{PerDay: 150}, 51); d.Allowed || d.Layer != Day || d.Remaining != 50 {
		t.Fatalf("day: got %+v; want refused with 50 left", d)
	}

	l.Refund("unknown", 10)
	l.Refund("k", 0)
	l.Refund("k", -5)
	if l.Len() != 1 {
		t.Errorf("Len() = %d after refunds to an unknown key; want 1", l.Len())
	}
}

// TestLimitChange: a new limit for a key applies at once, over the same
// counts.
func TestLimitChange(t *testing.T) {
	l, clk := newTestLimiter(t, base.Add(15*time.Second), 0)
	if got, want := mustTake(t, l, "k", Limit{PerMinute: 100}, 60), (Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 40, Reset: 45 * time.Second}); got != want {
		t.Fatalf("got %+v; want %+v", got, want)
	}
	// 60 over a limit of 50: 1 fits 11 s into the next minute, when the
	// 60 weigh 49.
	d := l.Take("k", Limit{PerMinute: 50}, 1)
	if want := (Decision{Layer: Minute, Limit: 50, RetryAfter: 56 * time.Second, Reset: 56 * time.Second}); d != want {
		t.Fatalf("lowered to 50: got %+v; want %+v", d, want)
	}
	checkRetryAfter(t, l, clk, "k", Limit{PerMinute: 50}, 1, d)
	// At 1:11 the 60 weigh 49, plus the 1 just admitted: 150 fit under 200.
	if got, want := mustTake(t, l, "k", Limit{PerMinute: 200}, 150), (Decision{Allowed: true, Layer: Minute, Limit: 200, Remaining: 0, Reset: 49 * time.Second}); got != want {
		t.Fatalf("raised to 200: got %+v; want %+v", got, want)
	}
}

// TestAllowedDecision: an admitted request reports the layer with less
// left, after the request, and when that layer's window ends.
func TestAllowedDecision(t *testing.T) {
	at := base.Add(15 * time.Second) // 45 s to the next minute, 11h59m45s to midnight
	toMidnight := 11*time.Hour + 59*time.Minute + 45*time.Second
	for _, c := range []struct {
		name string
		lim  Limit
		prev int64 // events taken a minute earlier
		want Decision
	}{
		{"minute tighter", Limit{100, 1000}, 0, Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 90, Reset: 45 * time.Second}},
		{"day tighter", Limit{100, 50}, 0, Decision{Allowed: true, Layer: Day, Limit: 50, Remaining: 40, Reset: toMidnight}},
		{"tie", Limit{100, 100}, 0, Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 90, Reset: 45 * time.Second}},
		{"minute only", Limit{100, 0}, 0, Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 90, Reset: 45 * time.Second}},
		{"day only", Limit{0, 100}, 0, Decision{Allowed: true, Layer: Day, Limit: 100, Remaining: 90, Reset: toMidnight}},
		// 100 a minute ago weigh 75 at 15 s: 100 − 75 − 10 = 15 left.
		{"previous minute", Limit{100, 1000}, 100, Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 15, Reset: 45 * time.Second}},
		// 99 weigh 74.25: 15.75 left, rounded down.
		{"rounded down", Limit{100, 1000}, 99, Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 15, Reset: 45 * time.Second}},
		{"day tighter after the previous minute", Limit{100, 120}, 100, Decision{Allowed: true, Layer: Day, Limit: 120, Remaining: 10, Reset: toMidnight}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, clk := newTestLimiter(t, at.Add(-time.Minute), 0)
			if c.prev > 0 {
				mustTake(t, l, "k", c.lim, c.prev)
			}
			clk.Set(at)
			if got := l.Take("k", c.lim, 10); got != c.want {
				t.Errorf("got %+v; want %+v", got, c.want)
			}
		})
	}
}

func TestZeroEvents(t *testing.T) {
	l, _ := newTestLimiter(t, base, 0)
	lim := Limit{PerMinute: 10}
	mustTake(t, l, "k", lim, 10)
	for _, n := range []int64{0, -3} {
		if got, want := l.Take("k", lim, n), (Decision{Allowed: true, Layer: Minute, Limit: 10, Remaining: 0, Reset: time.Minute}); got != want {
			t.Errorf("Take(%d): got %+v; want %+v", n, got, want)
		}
	}
}

// TestClockStepsBack: a clock that steps back is taken as the start of
// the latest window seen, where the previous minute weighs fully.
func TestClockStepsBack(t *testing.T) {
	l, clk := newTestLimiter(t, base.Add(30*time.Second), 0)
	lim := Limit{PerMinute: 100}
	mustTake(t, l, "k", lim, 80)
	clk.Set(base.Add(time.Minute + 30*time.Second))
	mustTake(t, l, "k", lim, 10) // 80 weigh 40
	// Back to 0:50 of the first minute: taken as 1:00, where the 80 weigh
	// fully and 11 more fit once 80×(1−e/60s) <= 79, at 1:00.75.
	clk.Set(base.Add(50 * time.Second))
	d := l.Take("k", lim, 11)
	if want := (Decision{Layer: Minute, Limit: 100, Remaining: 10, RetryAfter: 10750 * time.Millisecond, Reset: 10750 * time.Millisecond}); d != want {
		t.Fatalf("got %+v; want %+v", d, want)
	}
	checkRetryAfter(t, l, clk, "k", lim, 11, d)
	clk.Set(base.Add(50 * time.Second))
	if got, want := l.Take("k", lim, 0), (Decision{Allowed: true, Layer: Minute, Limit: 100, Remaining: 0, Reset: 70 * time.Second}); got != want {
		t.Errorf("allowed: got %+v; want %+v", got, want)
	}
}

func TestMaxKeys(t *testing.T) {
	lim := Limit{PerMinute: 100}
	l, clk := newTestLimiter(t, base, 3)
	for _, k := range []string{"a", "b", "c"} {
		mustTake(t, l, k, lim, 1)
	}
	untracked := Decision{Layer: Minute, Limit: 100, RetryAfter: time.Second, Reset: time.Second, Untracked: true}
	if got := l.Take("d", lim, 1); got != untracked {
		t.Fatalf("a new key in a full table: got %+v; want %+v", got, untracked)
	}
	if got := l.Take("d", Limit{PerDay: 5}, 1); got != (Decision{Layer: Day, Limit: 5, RetryAfter: time.Second, Reset: time.Second, Untracked: true}) {
		t.Fatalf("a new key with only a day limit: got %+v", got)
	}
	mustTake(t, l, "a", lim, 1) // tracked identities still work
	if l.Len() != 3 {
		t.Fatalf("Len() = %d; want 3", l.Len())
	}

	// At 1m59.5s the events are in the previous window: still active.
	clk.Set(base.Add(time.Minute + 59500*time.Millisecond))
	if got := l.Take("d", lim, 1); got != untracked {
		t.Fatalf("a new key while the others' previous minute holds events: got %+v; want %+v", got, untracked)
	}
	// At 2m0.2s they are idle, but a full table that freed nothing is
	// not swept again for a second.
	clk.Set(base.Add(2*time.Minute + 200*time.Millisecond))
	if got := l.Take("d", lim, 1); got != untracked {
		t.Fatalf("within a second of a fruitless sweep: got %+v; want %+v", got, untracked)
	}
	clk.Set(base.Add(2*time.Minute + 500*time.Millisecond))
	mustTake(t, l, "d", lim, 1)
	if s := l.Stats(); s != (Stats{Keys: 1, Evicted: 3}) {
		t.Fatalf("Stats() = %+v; want 1 key, 3 evicted", s)
	}
	// An evicted identity starts again from nothing.
	if got := mustTake(t, l, "a", lim, 100); got.Remaining != 0 {
		t.Errorf("evicted identity: got %+v; want its whole limit", got)
	}
}

// TestMaxKeysDay: an identity with a day quota stays tracked until
// midnight.
func TestMaxKeysDay(t *testing.T) {
	lim := Limit{PerDay: 100}
	l, clk := newTestLimiter(t, time.Date(2026, 3, 10, 23, 50, 0, 0, time.UTC), 1)
	mustTake(t, l, "a", lim, 1)
	clk.Add(5 * time.Minute)
	if got := l.Take("b", lim, 1); !got.Untracked {
		t.Fatalf("before midnight: got %+v; want Untracked", got)
	}
	clk.Add(5 * time.Minute)
	mustTake(t, l, "b", lim, 1)
}

// TestConcurrentTake: many goroutines on one key admit exactly the limit.
func TestConcurrentTake(t *testing.T) {
	l, _ := newTestLimiter(t, base.Add(10*time.Second), 0)
	lim := Limit{PerMinute: 10_000, PerDay: 50_000}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for l.Take("k", lim, 1).Allowed {
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	if got := admitted.Load(); got != 10_000 {
		t.Errorf("admitted %d; want exactly 10000", got)
	}
}

// TestConcurrentMixed runs Take, Refund, reports and evictions at once
// over more identities than the table holds, for the race detector.
func TestConcurrentMixed(t *testing.T) {
	clk := newClock(base)
	a := New(Options{MaxKeys: 20, Now: clk.Now})
	b := New(Options{MaxKeys: 20, Now: clk.Now})
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = string(rune('A'+i%26)) + string(rune('a'+i/26))
	}
	lim := Limit{PerMinute: 50}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := keys[(g*7+i)%len(keys)]
				if a.Take(k, lim, 1).Allowed && i%5 == 0 {
					a.Refund(k, 1)
				}
				if i%100 == 0 {
					clk.Add(7 * time.Second)
				}
			}
		})
	}
	wg.Go(func() {
		var buf []byte
		for range 200 {
			buf = a.AppendReport(buf[:0], "a")
			if len(buf) > 0 {
				if err := b.Merge(buf, "b"); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	wg.Wait()
	if a.Len() > 20 || b.Len() > 20 {
		t.Errorf("Len() = %d, %d; want at most MaxKeys (20)", a.Len(), b.Len())
	}
}

// TestBothLayersRefuseTie: when both layers refuse with the same wait (a
// request of the whole minute limit 90 s before midnight waits two
// minutes less the 30 s elapsed, to midnight), the day layer is reported.
func TestBothLayersRefuseTie(t *testing.T) {
	lim := Limit{PerMinute: 10, PerDay: 20}
	l, clk := newTestLimiter(t, time.Date(2026, 3, 10, 23, 50, 0, 0, time.UTC), 0)
	mustTake(t, l, "k", lim, 10) // the day: 10 of 20
	clk.Set(time.Date(2026, 3, 10, 23, 58, 30, 0, time.UTC))
	mustTake(t, l, "k", lim, 1) // the minute: 1 of 10, the day 11 of 20
	d := l.Take("k", lim, 10)
	if want := (Decision{Layer: Day, Limit: 20, Remaining: 9, RetryAfter: 90 * time.Second, Reset: 90 * time.Second}); d != want {
		t.Fatalf("got %+v; want %+v", d, want)
	}
	checkRetryAfter(t, l, clk, "k", lim, 10, d)
}
