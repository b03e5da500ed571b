package limits

import (
	"math"
	"math/bits"
	"sync"
	"time"
)

const (
	minuteNanos   = int64(time.Minute)
	dayNanos      = int64(24 * time.Hour)
	minutesPerDay = dayNanos / minuteNanos
)

// instant is a moment split into the windows it falls in. Unix time has
// no leap seconds, so UTC calendar days are exactly the 86,400 s spans
// from the epoch, and each starts on a Unix minute.
type instant struct {
	minute     int64 // Unix minute: minutes since the epoch
	elapsed    int64 // nanoseconds since the minute began, in [0, minuteNanos)
	day        int64 // UTC day: days since the epoch
	toMidnight int64 // nanoseconds until the next UTC midnight, in (0, dayNanos]
}

func instantOf(t time.Time) instant {
	return instantAt(t.UnixNano())
}

func instantAt(ns int64) instant {
	m := floorDiv(ns, minuteNanos)
	d := floorDiv(m, minutesPerDay)
	return instant{minute: m, elapsed: ns - m*minuteNanos, day: d, toMidnight: (d+1)*dayNanos - ns}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// counts is one window's events.
type counts struct {
	local  int64 // admitted by this Limiter, minus refunds
	sent   int64 // how much of local AppendReport has reported: its high-water mark, so it may exceed local after a refund
	remote int64 // reported by other replicas (Merge), saturating
}

func (c *counts) total() int64 { return satAdd(c.local, c.remote) }

// unsent returns what AppendReport has not reported yet, and marks it
// reported. A refund after a report is never reported (reports carry no
// negative counts): the others keep counting those events until local
// catches up with sent again.
func (c *counts) unsent() int64 {
	d := c.local - c.sent
	if d <= 0 {
		return 0
	}
	c.sent = c.local
	return d
}

// satAdd adds two non-negative counts, saturating at math.MaxInt64: remote
// counts come from the network and must not wrap into negatives.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// entry is one identity's windows. Its fields are protected by mu; the
// table's shard lock, when both are held, is taken first.
type entry struct {
	mu     sync.Mutex // protects the fields below
	dead   bool       // evicted from the table: whoever finds it looks the key up again
	minute int64      // Unix minute of win[0]; win[1] is the minute before
	day    int64      // UTC day of dayc
	win    [2]counts  // [0] the current minute, [1] the previous one
	dayc   counts
	_      [16]byte // to 128 bytes, a size class of its own, so two identities never share a cache line
}

// align moves the windows forward to at and returns at as the windows see
// it. A clock that stepped back is taken as the start of the latest
// window seen: its elapsed time is 0 (the previous minute weighs fully),
// which is the conservative choice.
func (e *entry) align(at instant) instant {
	switch {
	case at.minute == e.minute:
	case at.minute == e.minute+1:
		e.win[1], e.win[0] = e.win[0], counts{}
		e.minute = at.minute
	case at.minute > e.minute:
		e.win = [2]counts{}
		e.minute = at.minute
	default:
		at = instantAt(e.minute * minuteNanos)
	}
	if at.day > e.day {
		e.dayc = counts{}
		e.day = at.day
	}
	return at
}

// idle reports whether e holds nothing that any estimate at `at` uses, so
// it can be evicted without changing a decision.
func (e *entry) idle(at instant) bool {
	e.align(at)
	return e.win[0].total() == 0 && e.win[1].total() == 0 && e.dayc.total() == 0
}

// take decides on n events (n >= 0) under lim at `at` and, if they are
// admitted, counts them in each layer that is on. A layer that is off
// neither decides nor counts.
func (e *entry) take(lim Limit, n int64, at instant) Decision {
	aligned := e.align(at)
	d := e.decide(lim, n, aligned)
	if back := at.stepsBack(aligned); back > 0 && !d.Never {
		// The clock stepped back: the waits run from the window's start.
		d.Reset += back
		if !d.Allowed {
			d.RetryAfter += back
		}
	}
	return d
}

// stepsBack returns how far `at` lies before aligned, the instant align
// made of it.
func (at instant) stepsBack(aligned instant) time.Duration {
	return time.Duration((aligned.minute-at.minute)*minuteNanos + aligned.elapsed - at.elapsed)
}

// decide is take on windows already aligned to at.
func (e *entry) decide(lim Limit, n int64, at instant) Decision {
	minOn, dayOn := lim.PerMinute > 0, lim.PerDay > 0
	if minOn && n > lim.PerMinute {
		return Decision{Layer: Minute, Limit: lim.PerMinute, Remaining: e.minuteRoom(lim.PerMinute, at), Never: true}
	}
	if dayOn && n > lim.PerDay {
		return Decision{Layer: Day, Limit: lim.PerDay, Remaining: e.dayRoom(lim.PerDay), Never: true}
	}
	var minRoom, dayRoom int64
	var refused bool
	var d Decision
	if minOn {
		if minRoom = e.minuteRoom(lim.PerMinute, at); n > minRoom {
			refused = true
			d = Decision{Layer: Minute, Limit: lim.PerMinute, Remaining: minRoom,
				RetryAfter: minuteWait(e.win[1].total(), e.win[0].total(), lim.PerMinute, n, at.elapsed)}
		}
	}
	if dayOn {
		if dayRoom = e.dayRoom(lim.PerDay); n > dayRoom {
			// When both refuse, the one with the later wait is reported: its
			// RetryAfter passes both layers, and the headers describe it.
			if wait := time.Duration(at.toMidnight); !refused || wait >= d.RetryAfter {
				refused = true
				d = Decision{Layer: Day, Limit: lim.PerDay, Remaining: dayRoom, RetryAfter: wait}
			}
		}
	}
	if refused {
		d.Reset = d.RetryAfter
		return d
	}
	d.Allowed = true
	if minOn {
		e.win[0].local += n
		d.Layer, d.Limit, d.Remaining, d.Reset = Minute, lim.PerMinute, minRoom-n, time.Duration(minuteNanos-at.elapsed)
	}
	if dayOn {
		e.dayc.local += n
		if !minOn || dayRoom-n < d.Remaining {
			d.Layer, d.Limit, d.Remaining, d.Reset = Day, lim.PerDay, dayRoom-n, time.Duration(at.toMidnight)
		}
	}
	return d
}

// refund gives back up to n events to the current minute, then the
// previous one (a request refused by the store right after a minute
// boundary), and to the current day, never below what this Limiter itself
// admitted there.
func (e *entry) refund(n int64, at instant) {
	e.align(at)
	left := n
	for i := range e.win {
		d := min(left, e.win[i].local)
		e.win[i].local -= d
		left -= d
	}
	e.dayc.local -= min(n, e.dayc.local)
}

func (e *entry) dayRoom(limit int64) int64 {
	if used := e.dayc.total(); used < limit {
		return limit - used
	}
	return 0
}

// minuteRoom is how many events fit now under limit: the largest k with
// estimate + k <= limit, where estimate = prev×(W−elapsed)/W + cur and W is
// a minute. It is computed in 128 bits, exactly (no float rounding), as
// (limit−cur)×W − prev×(W−elapsed) divided by W, rounded down.
func (e *entry) minuteRoom(limit int64, at instant) int64 {
	prev, cur := e.win[1].total(), e.win[0].total()
	if cur >= limit {
		return 0
	}
	hi1, lo1 := bits.Mul64(uint64(limit-cur), uint64(minuteNanos))
	hi2, lo2 := bits.Mul64(uint64(prev), uint64(minuteNanos-at.elapsed))
	lo, borrow := bits.Sub64(lo1, lo2, 0)
	hi, borrow := bits.Sub64(hi1, hi2, borrow)
	if borrow != 0 {
		return 0
	}
	// hi < W: the dividend is below 2^63 × W, so the quotient fits.
	q, _ := bits.Div64(hi, lo, uint64(minuteNanos))
	return int64(q)
}

// minuteWait is the exact wait, from elapsed into the current minute,
// until n events fit under limit if nothing else is admitted: the
// estimate is continuous and never rises on its own, so the first moment
// it fits is found by solving, not stepping.
//
//   - If cur+n <= limit, n fits later this minute, once
//     prev×(W−e') <= r×W with r = limit−n−cur: e' = W − ⌊r×W/prev⌋
//     (e' = W is the next minute's start, where the estimate is cur).
//   - Otherwise the next minute, whose previous window is cur and current
//     one empty, needs cur×(W−f) <= (limit−n)×W: f = W − ⌊(limit−n)×W/cur⌋;
//     f = W (limit = n) is the minute after that, when nothing is left.
//
// The caller has refused n, so prev > r in the first case and n <= limit.
func minuteWait(prev, cur, limit, n, elapsed int64) time.Duration {
	if cur <= limit-n {
		r := limit - n - cur
		if r >= prev { // fits now; not reached when the caller refused
			return 0
		}
		return time.Duration(minuteNanos - mulDiv(r, minuteNanos, prev) - elapsed)
	}
	r := limit - n
	f := int64(0)
	if r < cur {
		f = minuteNanos - mulDiv(r, minuteNanos, cur)
	}
	return time.Duration(minuteNanos - elapsed + f)
}

// mulDiv returns ⌊a×b/c⌋ for 0 <= a < c and b > 0, in 128 bits: the
// quotient is below b, so it fits.
func mulDiv(a, b, c int64) int64 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	q, _ := bits.Div64(hi, lo, uint64(c))
	return int64(q)
}
