package limits

import (
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limit is one identity's limits, in events. A zero or negative field
// turns that layer off; the zero Limit is off entirely.
type Limit struct {
	PerMinute int64 // sliding one-minute estimate (burst)
	PerDay    int64 // per UTC calendar day (quota)
}

// Off reports whether both layers are off: then nothing is counted and
// callers need not call Take.
func (l Limit) Off() bool { return l.PerMinute <= 0 && l.PerDay <= 0 }

// Layer names one of the two limits of a Limit.
type Layer uint8

const (
	Minute Layer = iota // Limit.PerMinute
	Day                 // Limit.PerDay
)

// String returns "minute" or "day".
func (l Layer) String() string {
	switch l {
	case Minute:
		return "minute"
	case Day:
		return "day"
	}
	return "Layer(" + strconv.Itoa(int(l)) + ")"
}

// Decision is Take's answer. Its zero value is a refusal of the minute
// layer with no wait, which Take never returns.
type Decision struct {
	// Allowed reports that the events were admitted and counted in every
	// layer that is on.
	Allowed bool
	// Layer is, when refused, the layer that refused (when both did, the
	// one with the later wait, the day on a tie, so RetryAfter and the
	// headers describe the same limit); when allowed, the layer with less budget left (the
	// minute layer on a tie).
	Layer Layer
	// Limit is Layer's limit.
	Limit int64
	// Remaining is how many more events Layer admits now (>= 0): after
	// this request when allowed; when refused, what a smaller request
	// could still take.
	Remaining int64
	// Reset is, when allowed, the time until Layer's current window
	// ends: the next Unix minute, or the next UTC midnight. When refused
	// it equals RetryAfter.
	Reset time.Duration
	// RetryAfter is, when refused, the earliest wait after which the
	// same request passes both layers if nothing else is admitted in the
	// meantime (by this replica or, as far as it learns, by others). It
	// is exact to the nanosecond, and 0 when Never or Allowed.
	RetryAfter time.Duration
	// Never reports that the request is larger than Layer's limit: it
	// can never pass, and RetryAfter is 0.
	Never bool
	// Untracked reports a refusal because the table of identities is
	// full (Options.MaxKeys) of identities whose windows hold events;
	// RetryAfter is then 1s.
	Untracked bool
}

// Options configures a Limiter. The zero value is usable.
type Options struct {
	// MaxKeys bounds the identities tracked, local and learnt from other
	// replicas' reports (default 10,000). When the table is full, the
	// identities whose windows hold nothing are evicted to make room, at
	// most once a second; if none can be, a new identity is refused
	// (Decision.Untracked) and one in a report is skipped
	// (Stats.MergeSkipped). An identity stays tracked while its windows
	// hold events: up to two minutes after its last event with only a
	// PerMinute limit, until the next UTC midnight with a PerDay limit. So
	// MaxKeys must exceed the identities with a daily quota active per day.
	MaxKeys int
	// Now is the clock; nil means time.Now. Tests inject one.
	Now func() time.Time
}

const (
	defaultMaxKeys = 10_000
	// sweepBackoff is how long a full table, swept without freeing a
	// slot, is left alone; it is also an Untracked refusal's RetryAfter.
	sweepBackoff = time.Second
	// shardCount spreads the table's read lock: with one RWMutex every
	// Take on every core writes its reader count. BenchmarkTakeParallel,
	// 64 keys, -cpu 2 (2-core VM): 78–85 ns/op with 64 shards, 179–266
	// with one, slower than a single core's 137.
	shardCount = 64
)

// Limiter counts events per identity against two-layer limits (see the
// package documentation). It is safe for concurrent use, and no call
// blocks on anything but short critical sections. The zero Limiter is not
// usable; call New.
type Limiter struct {
	now     func() time.Time
	maxKeys int64
	seed    maphash.Seed

	keys   atomic.Int64 // entries in all shards; at most maxKeys
	shards [shardCount]shard

	// Lock order: sweepMu, then a shard's mu, then an entry's mu.
	sweepMu   sync.Mutex // protects nextSweep; held for a whole sweep, so one runs at a time
	nextSweep int64      // Unix ns before which a full table is not swept again

	reportMu sync.Mutex // protects scratch; one AppendReport at a time
	scratch  []reportCount

	evicted      atomic.Uint64
	mergeSkipped atomic.Uint64
}

// shard is one part of the table, chosen by a hash of the key.
type shard struct {
	mu sync.RWMutex      // protects m (not the entries: each has its own mutex)
	m  map[string]*entry // keys are copies of the caller's strings
	_  [32]byte          // to a 64-byte cache line: shards do not false-share
}

// New returns an empty Limiter.
func New(o Options) *Limiter {
	l := &Limiter{now: o.Now, maxKeys: int64(o.MaxKeys), seed: maphash.MakeSeed()}
	if l.now == nil {
		l.now = time.Now
	}
	if l.maxKeys <= 0 {
		l.maxKeys = defaultMaxKeys
	}
	for i := range l.shards {
		l.shards[i].m = make(map[string]*entry)
	}
	return l
}

// Take admits n events for key under lim, all or none, and reserves them
// in both layers when admitted: Refund gives them back. lim may change
// from call to call (a plan change): counts are kept and the new limits
// apply at once. A layer counts only while it is on. With lim.Off() Take
// counts nothing and allows; n <= 0 is allowed and counts nothing.
//
// key is not retained (a new identity's key is copied) and is never
// logged. For an identity already tracked Take allocates nothing; a new
// one costs one entry and a copy of its key.
func (l *Limiter) Take(key string, lim Limit, n int64) Decision {
	if lim.Off() {
		return Decision{Allowed: true}
	}
	n = max(n, 0)
	at := instantOf(l.now())
	for {
		e := l.get(key, at, true)
		if e == nil {
			d := Decision{Layer: Minute, Limit: lim.PerMinute, RetryAfter: sweepBackoff, Reset: sweepBackoff, Untracked: true}
			if lim.PerMinute <= 0 {
				d.Layer, d.Limit = Day, lim.PerDay
			}
			return d
		}
		e.mu.Lock()
		if e.dead {
			e.mu.Unlock()
			continue
		}
		d := e.take(lim, n, at)
		e.mu.Unlock()
		return d
	}
}

// Refund gives back n events Take admitted for key, to the current
// windows (the current minute first, then the previous one), never below
// what this Limiter admitted there. An identity no longer tracked, or
// n <= 0, is ignored. Events already reported to other replicas stay
// counted there (see the package documentation).
func (l *Limiter) Refund(key string, n int64) {
	if n <= 0 {
		return
	}
	at := instantOf(l.now())
	if e := l.get(key, at, false); e != nil {
		e.mu.Lock()
		if !e.dead { // evicted: it held nothing to give back
			e.refund(n, at)
		}
		e.mu.Unlock()
	}
}

// Len returns the number of identities tracked.
func (l *Limiter) Len() int { return int(l.keys.Load()) }

// Stats are a Limiter's counters since New, for metrics.
type Stats struct {
	Keys int // identities tracked now
	// Evicted counts identities dropped from a full table because their
	// windows held nothing.
	Evicted uint64
	// MergeSkipped counts identities in other replicas' reports not
	// counted because the table was full: their events are under-counted
	// here for the rest of their windows.
	MergeSkipped uint64
}

// Stats returns the Limiter's counters.
func (l *Limiter) Stats() Stats {
	return Stats{Keys: l.Len(), Evicted: l.evicted.Load(), MergeSkipped: l.mergeSkipped.Load()}
}

func (l *Limiter) shard(key string) *shard {
	return &l.shards[maphash.String(l.seed, key)%shardCount]
}

// get returns key's entry, creating it if create is set and the table
// has room (sweeping it when full), or nil. The entry may be evicted
// before the caller locks it: callers check dead.
func (l *Limiter) get(key string, at instant, create bool) *entry {
	s := l.shard(key)
	s.mu.RLock()
	e := s.m[key]
	s.mu.RUnlock()
	if e != nil || !create {
		return e
	}
	if !l.reserve(at) {
		s.mu.RLock()
		e = s.m[key] // added meanwhile by another caller
		s.mu.RUnlock()
		return e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e = s.m[key]; e != nil {
		l.keys.Add(-1)
		return e
	}
	e = &entry{minute: at.minute, day: at.day}
	s.m[strings.Clone(key)] = e
	return e
}

// reserve takes a slot in the table for a new identity, sweeping a full
// table for idle identities, and reports whether it got one.
func (l *Limiter) reserve(at instant) bool {
	for {
		n := l.keys.Load()
		if n < l.maxKeys {
			if l.keys.CompareAndSwap(n, n+1) {
				return true
			}
			continue
		}
		if !l.sweep(at) {
			return false
		}
	}
}

// sweep evicts every identity whose windows hold nothing at `at`, and
// reports whether the table has room. A sweep visits the whole table
// under each shard's write lock in turn, so a full table that freed
// nothing is not swept again for sweepBackoff: a stream of new identities
// against a table full of active ones costs one sweep a second.
func (l *Limiter) sweep(at instant) bool {
	l.sweepMu.Lock()
	defer l.sweepMu.Unlock()
	if l.keys.Load() < l.maxKeys {
		return true // another sweep made room, or an identity left
	}
	now := at.minute*minuteNanos + at.elapsed
	if now < l.nextSweep {
		return false
	}
	var freed int64
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			e.mu.Lock()
			if e.idle(at) {
				e.dead = true
				delete(s.m, k)
				freed++
			}
			e.mu.Unlock()
		}
		s.mu.Unlock()
	}
	l.keys.Add(-freed)
	l.evicted.Add(uint64(freed))
	if freed == 0 {
		l.nextSweep = now + int64(sweepBackoff)
		return false
	}
	return true
}
