package buffer

import (
	"fmt"
	"time"
)

// ErrStreamShare reports a Put for a stream (a Key) that would hold more
// than its share of the buffer (Options.StreamShare) while another stream
// is accepting (HTTP 429). It wraps ErrFull: it passes once the flusher
// delivers what the stream holds, or once the others fall quiet, and a
// store in front of the buffer (the spool) spills it as it spills a full
// buffer.
var ErrStreamShare = fmt.Errorf("%w: stream over its share of the buffer", ErrFull)

// ActiveFor is how long a stream counts as accepting after its last Put
// that was accepted or refused for room (ErrFull, not ErrStreamShare),
// once it holds nothing. While another stream is accepting, a stream may
// hold no more than its share (Options.StreamShare).
const ActiveFor = time.Second

// maxIdleStreams and maxIdleKeyBytes bound the streams remembered that
// hold nothing: their number and their keys' bytes (a pass-through token
// may be 64 KiB). Streams that hold events are bounded already, by the
// events held and the caps on distinct keys.
const (
	maxIdleStreams  = 4096
	maxIdleKeyBytes = 4 << 20
)

// prunePerCall is how many idle streams one Put or Release forgets at most,
// so pruning costs little on every call and nothing in one long stall.
const prunePerCall = 2

// streams counts what each stream (each Key) holds, for the fair share.
// Guarded by Buffer.mu. nil in a Buffer whose share is off, so a Put then
// pays one nil check.
//
// Deciding whether another stream than s is accepting takes no scan: a
// stream is accepting while it holds something, or for ActiveFor after its
// last attempt. holding counts the streams that hold something, so another
// holds iff holding minus s's own one is positive. For the idle streams,
// only the most recent attempt by a stream other than s matters: if it is
// older than ActiveFor, every other idle stream's is too. last is the
// stream that attempted most recently and prev the most recent one other
// than last; when s attempts, prev becomes the old last unless s was last.
// So the most recent other is last, or prev when s is last: two pointers,
// kept up to date in O(1) per attempt.
type streams struct {
	maxEvents, maxBytes int // one stream's share

	m       map[Key]*stream
	holding int // streams in m holding events or bytes

	// last and prev are the two streams that attempted most recently (see
	// above). They may outlive their entry in m; a stream made again for
	// the same key takes the entry back (add), so one key never has two.
	last, prev *stream

	// idle lists the streams in m that hold nothing, least recently
	// active first: head is the next to forget.
	head, tail   *stream
	idleN        int
	idleKeyBytes int
}

// stream is one Key's accounting.
type stream struct {
	key           Key
	events, bytes int       // held: the events and their NDJSON bytes
	lastTry       time.Time // last attempt accepted or refused for room
	idleSince     time.Time // when it went to the idle list's tail
	older, newer  *stream   // idle list links
	listed        bool      // on the idle list
}

func (s *stream) holds() bool { return s.events > 0 || s.bytes > 0 }

func keyLen(k Key) int { return len(k.Client) + len(k.Token) + len(k.Datasource) }

// newStreams returns the table for a share of a buffer of maxEvents and
// maxBytes, or nil when the share is off (not strictly between 0 and 1).
func newStreams(share float64, maxEvents, maxBytes int) *streams {
	if !(share > 0 && share < 1) {
		return nil
	}
	return &streams{
		maxEvents: int(share * float64(maxEvents)),
		maxBytes:  int(share * float64(maxBytes)),
		m:         make(map[Key]*stream),
	}
}

// allows reports whether the stream of key, s (nil when not remembered),
// may hold n more events of size bytes at now: within its share, or when
// no other stream is accepting.
func (t *streams) allows(s *stream, key Key, n, size int, now time.Time) bool {
	var events, bytes int
	if s != nil {
		events, bytes = s.events, s.bytes
	}
	if events+n <= t.maxEvents && bytes+size <= t.maxBytes {
		return true
	}
	return !t.othersAccepting(s, key, now)
}

// othersAccepting reports whether a stream other than key's (s, nil when
// not remembered) holds something or attempted within ActiveFor of now.
func (t *streams) othersAccepting(s *stream, key Key, now time.Time) bool {
	others := t.holding
	if s != nil && s.holds() {
		others--
	}
	if others > 0 {
		return true
	}
	o := t.otherThan(s, key)
	return o != nil && now.Sub(o.lastTry) < ActiveFor
}

// otherThan returns the stream other than key's (s, nil when not
// remembered) that attempted most recently, or nil.
func (t *streams) otherThan(s *stream, key Key) *stream {
	o := t.last
	// Without an entry, the key may still be last, forgotten (see add).
	if o != nil && (o == s || s == nil && o.key == key) {
		o = t.prev
	}
	return o
}

// tried records an attempt by s, accepted or refused for room.
func (t *streams) tried(s *stream, now time.Time) {
	s.lastTry = now
	if t.last != s {
		t.prev, t.last = t.last, s
	}
}

// add remembers key's stream: last's or prev's when it is key's (forgotten
// from m while still among the recent attempters), else a new one. key's
// token should be the copy the buffer holds, if it holds one (keys.shared).
func (t *streams) add(key Key) *stream {
	var s *stream
	switch {
	case t.last != nil && t.last.key == key:
		s = t.last
	case t.prev != nil && t.prev.key == key:
		s = t.prev
	default:
		s = new(stream)
	}
	s.key = key
	t.m[key] = s
	return s
}

// hold counts n events of size bytes more for s.
func (t *streams) hold(s *stream, n, size int) {
	if !s.holds() {
		t.holding++
		t.unlist(s)
	}
	s.events += n
	s.bytes += size
}

// release counts n events of size bytes less for key's stream, clamped at
// zero; a stream that then holds nothing goes idle.
func (t *streams) release(key Key, n, size int, now time.Time) {
	s := t.m[key]
	if s == nil || !s.holds() {
		return
	}
	s.events = max(s.events-n, 0)
	s.bytes = max(s.bytes-size, 0)
	if !s.holds() {
		t.holding--
		t.idle(s, now)
	}
}

// idle moves s, which holds nothing, to the idle list's tail. When the
// list is at its bounds even after forgetting prunePerCall of its oldest,
// s is forgotten instead: it holds nothing, and its last attempt lives on
// in last or prev if it still matters.
func (t *streams) idle(s *stream, now time.Time) {
	if s.listed {
		t.unlist(s)
	} else {
		kb := keyLen(s.key)
		for i := 0; i < prunePerCall && t.head != nil && t.overIdle(kb); i++ {
			t.forget(t.head)
		}
		if t.overIdle(kb) {
			delete(t.m, s.key)
			return
		}
	}
	s.idleSince = now
	s.older, s.newer = t.tail, nil
	if t.tail != nil {
		t.tail.newer = s
	} else {
		t.head = s
	}
	t.tail = s
	s.listed = true
	t.idleN++
	t.idleKeyBytes += keyLen(s.key)
}

func (t *streams) overIdle(kb int) bool {
	return t.idleN >= maxIdleStreams || t.idleKeyBytes+kb > maxIdleKeyBytes
}

// prune forgets up to prunePerCall idle streams that have held nothing and
// not attempted for ActiveFor. The list is in idleSince order, so it stops
// at the first that is still recent.
func (t *streams) prune(now time.Time) {
	for range prunePerCall {
		h := t.head
		if h == nil || now.Sub(h.idleSince) < ActiveFor {
			return
		}
		t.forget(h)
	}
}

// forget removes an idle stream from the list and the table.
func (t *streams) forget(s *stream) {
	t.unlist(s)
	delete(t.m, s.key)
}

func (t *streams) unlist(s *stream) {
	if !s.listed {
		return
	}
	if s.older != nil {
		s.older.newer = s.newer
	} else {
		t.head = s.newer
	}
	if s.newer != nil {
		s.newer.older = s.older
	} else {
		t.tail = s.older
	}
	s.older, s.newer, s.listed = nil, nil, false
	t.idleN--
	t.idleKeyBytes -= keyLen(s.key)
}

// shareLocked is the share's part of a Put of n events of size bytes for
// key at now, after the other checks: full says the buffer refused them
// for room. It returns the stream to hold them in, or ErrStreamShare, or
// ErrFull when full. b.mu is held; b.streams is not nil.
func (b *Buffer) shareLocked(key Key, n, size int, now time.Time, full bool) (*stream, error) {
	t := b.streams
	s := t.m[key]
	if !full && !t.allows(s, key, n, size, now) {
		// Not an attempt that makes the stream accepting: a request bigger
		// than the share that counted would keep every other stream at its
		// share while getting nowhere itself, and two such streams would
		// refuse each other forever.
		t.prune(now)
		return nil, ErrStreamShare
	}
	if s == nil {
		s = t.add(b.keys.shared(key))
	}
	t.tried(s, now)
	if full {
		if !s.holds() {
			t.idle(s, now)
		}
		t.prune(now)
		return nil, ErrFull
	}
	return s, nil
}

// refuseFull is the early refusal of a Put for room when the share is on:
// the attempt still makes key's stream accepting, so that a stream that
// filled the buffer alone is held to its share from now on. It returns
// ErrClosed, the key checks' error, or ErrFull.
func (b *Buffer) refuseFull(key Key) error {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if _, err := b.keys.admit(key, now); err != nil {
		return err
	}
	_, err := b.shareLocked(key, 0, 0, now, true)
	return err
}

// shareLapse returns how long until a stream of key refused with
// ErrStreamShare may be admitted with no Release: when no other stream
// holds anything, until the most recent other attempt is ActiveFor old.
// Zero means only a Release can change the answer. A PutWait waits at
// most that long before it tries again.
func (b *Buffer) shareLapse(key Key) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.streams
	if t == nil {
		return 0
	}
	s := t.m[key]
	others := t.holding
	if s != nil && s.holds() {
		others--
	}
	if others > 0 {
		return 0 // their Release wakes the waiter
	}
	o := t.otherThan(s, key)
	if o == nil {
		return time.Nanosecond // nothing stands in the way any more: try again
	}
	return max(time.Until(o.lastTry.Add(ActiveFor)), time.Nanosecond)
}

// StreamHeld returns the events, and their NDJSON bytes, that key's stream
// holds, as counted for the share (Options.StreamShare); zero when the
// share is off. key is compared whole, Client included. Safe for
// concurrent use.
func (b *Buffer) StreamHeld(key Key) (events, bytes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.streams == nil {
		return 0, 0
	}
	if s := b.streams.m[key]; s != nil {
		return s.events, s.bytes
	}
	return 0, 0
}

// streamCount returns how many streams the share's table remembers (for
// tests).
func (b *Buffer) streamCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.streams == nil {
		return 0
	}
	return len(b.streams.m)
}
