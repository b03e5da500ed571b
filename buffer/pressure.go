package buffer

import (
	"math"
	"sync"
	"time"
)

// RetryAfter estimates how long a client refused with ErrFull should wait
// before the buffer has room for events and bytes more: the excess over the
// limits divided by the measured drain rate, clamped to [1s, 60s]. Before
// anything has been released the rate is unknown and the answer is 1s; when
// nothing has drained for a while it is 60s.
func (b *Buffer) RetryAfter(events, bytes int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.drain.roll(time.Now())
	if !b.drain.known {
		return time.Second
	}
	excessE := float64(b.heldEvents + events - b.maxEvents)
	excessB := float64(b.heldBytes + bytes - b.maxBytes)
	secs := 0.0
	for _, x := range [][2]float64{{excessE, b.drain.events}, {excessB, b.drain.bytes}} {
		if x[0] <= 0 {
			continue
		}
		if x[1] <= 0 {
			return time.Minute
		}
		secs = max(secs, x[0]/x[1])
	}
	return min(max(time.Duration(secs*float64(time.Second)), time.Second), time.Minute)
}

// DrainRate returns the measured rate at which the consumer releases
// events and bytes, per second; known is false before anything was
// released.
func (b *Buffer) DrainRate() (events, bytes float64, known bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.drain.roll(time.Now())
	return b.drain.events, b.drain.bytes, b.drain.known
}

// drainRate is an exponentially weighted moving average of released events
// and bytes per second, over one-second windows. Guarded by Buffer.mu.
type drainRate struct {
	events, bytes float64 // per second
	known         bool    // something was released at least once
	windowStart   time.Time
	winEvents     int
	winBytes      int
}

func (d *drainRate) start(now time.Time) { d.windowStart = now }

func (d *drainRate) add(now time.Time, events, bytes int) {
	d.winEvents += events
	d.winBytes += bytes
	if events > 0 {
		d.known = true
	}
	d.roll(now)
}

// roll closes the current window once it is a second old, so a drain that
// stalled reads as a falling rate even when nothing calls add.
func (d *drainRate) roll(now time.Time) {
	el := now.Sub(d.windowStart).Seconds()
	if el < 1 {
		return
	}
	// Each elapsed second halves the old estimate's weight, so a window
	// closed late (nothing called add or roll for a while) counts as the
	// several quiet seconds it was.
	keep := math.Pow(0.5, el)
	d.events = keep*d.events + (1-keep)*float64(d.winEvents)/el
	d.bytes = keep*d.bytes + (1-keep)*float64(d.winBytes)/el
	d.winEvents, d.winBytes = 0, 0
	d.windowStart = now
}

// deny remembers (token, datasource) pairs upstream refused with 403, until
// their time passes. A 403 can mean a scope the token lacks for one
// datasource (DATASOURCES:APPEND:<name>), so the token stays usable for the
// others. Safe for concurrent use; its zero value is empty.
type deny struct {
	mu    sync.RWMutex // protects until
	until map[Key]time.Time
}

// maxDenied bounds the table; beyond it new tokens are not remembered (they
// still get 403 from upstream, one batch later).
const maxDenied = 10_000

// Deny makes Put and PutWaiting refuse entries for key (a client's token
// and a datasource) with ErrDenied until the given time. Entries already
// stored are unaffected. key.Client is ignored: upstream refused the token,
// whichever client sent it.
func (b *Buffer) Deny(key Key, until time.Time) { b.denied.add(key, until) }

func (d *deny) add(token Key, until time.Time) {
	token.Client = ""
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.until == nil {
		d.until = make(map[Key]time.Time)
	}
	now := time.Now()
	for t, u := range d.until {
		if !now.Before(u) {
			delete(d.until, t)
		}
	}
	if _, ok := d.until[token]; ok || len(d.until) < maxDenied {
		d.until[token] = until
	}
}

func (d *deny) has(token Key, now time.Time) bool {
	token.Client = ""
	d.mu.RLock()
	defer d.mu.RUnlock()
	u, ok := d.until[token]
	return ok && now.Before(u)
}
