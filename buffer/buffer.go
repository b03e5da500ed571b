// Package buffer holds accepted events in memory, bounded by an event count
// and a byte size, until the flusher reports them delivered or dropped.
//
// An event is accounted from the moment Put accepts it until Release is
// called for it. Take only hands entries to the consumer; they keep counting
// against the limits while the consumer batches, sends and retries them, so a
// long upstream outage turns into ErrFull for new writes, never into loss.
// A producer that would rather wait than be refused (a replay) uses
// PutWait, which Release wakes when it makes room.
package buffer

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrFull reports that accepting a request would exceed the buffer's limits.
// The request was not stored; the client may retry later (HTTP 429).
var ErrFull = errors.New("buffer: full")

// ErrTooLarge reports that a request holds more events or bytes than the
// whole buffer could ever hold, so retrying it cannot succeed (HTTP 413).
var ErrTooLarge = errors.New("buffer: request larger than the buffer")

// TooLargeError is ErrTooLarge from a store whose own limit is smaller than
// the buffer's (the JetStream queue's message size): Limit names it, for
// the client's error.
type TooLargeError struct {
	Limit string // e.g. "the queue's message limit (nats-server max_payload, 1048576 bytes)"
}

func (e *TooLargeError) Error() string { return "buffer: request larger than " + e.Limit }
func (e *TooLargeError) Unwrap() error { return ErrTooLarge }

// FullError is ErrFull from a store whose own limit was reached (the
// spool's disk): Limit names it and RetryAfter is the store's estimate of
// when it has room again.
type FullError struct {
	Limit      string
	RetryAfter time.Duration
}

func (e *FullError) Error() string { return "buffer: " + e.Limit + " full" }
func (e *FullError) Unwrap() error { return ErrFull }

// ErrClosed reports a Put after Close (HTTP 503: the process is draining).
var ErrClosed = errors.New("buffer: closed")

// ErrStorage is returned by a durable store in front of the buffer (the
// spool) that could not write a request down (HTTP 503). The request was
// not stored.
var ErrStorage = errors.New("buffer: storage failed")

// ErrDenied reports a Put for a token that upstream recently refused (HTTP
// 403); see Deny.
var ErrDenied = errors.New("buffer: token denied upstream")

// Key says where a group of events goes: one datasource, authenticated with
// one token. Token is empty when the flusher uses its own configured token.
// A Key is also a stream: the unit the buffer shares out fairly
// (Options.StreamShare) and the flusher batches.
type Key struct {
	Token      string
	Datasource string
	// Client is the named client the events came from: "" for unnamed
	// clients and for events replayed from a spool or a queue. It is part
	// of the stream, so the flusher batches per client too; denials (Deny)
	// ignore it, as upstream refuses a token whoever sent it.
	Client string
}

// Entry is the events of one accepted request, stored as NDJSON.
//
// Data holds Rows lines, each ending in '\n', byte-identical to what the
// client sent (less CRs and blank lines). Data belongs to the buffer: the
// consumer may read it, and may re-slice it at line boundaries, until it calls
// Release for those rows, and must never write to it.
type Entry struct {
	Key  Key
	Data []byte
	Rows int
	// Accepted is when Put stored the entry, in Unix nanoseconds.
	Accepted int64
	// Waiter, when not nil, is told when the entry's rows are delivered or
	// refused (a wait=true request).
	Waiter *Waiter
}

// Options bound a Buffer. Both event and byte limits must be positive.
type Options struct {
	// MaxEvents is how many events may be held at once.
	MaxEvents int
	// MaxBytes is how many bytes may be held at once: the events' NDJSON,
	// plus each distinct datasource name and client token held, once.
	MaxBytes int
	// MaxDatasources, when positive, caps the distinct datasources held at
	// once; a Put for another gets ErrTooManyDatasources. A datasource
	// stops counting when its last event is released.
	MaxDatasources int
	// MaxUnverifiedTokens, when positive, caps the distinct client tokens
	// held at once that upstream has not accepted in the last VerifiedFor
	// (see Verify); a Put for another gets ErrTooManyTokens. It keeps a
	// flood of junk tokens, each its own upstream request, from queueing
	// ahead of every real token's batches.
	MaxUnverifiedTokens int
	// StreamShare, strictly between 0 and 1, is the most of the buffer one
	// stream (one Key) may hold while another stream is accepting:
	// StreamShare × MaxEvents events and StreamShare × MaxBytes bytes of
	// NDJSON, rounded down. A stream is accepting while it holds events,
	// and for ActiveFor after its last Put accepted or refused for room.
	// Past its share a Put gets ErrStreamShare. A stream alone may fill
	// the whole buffer, and a request bigger than the share is taken only
	// from a stream alone. 0 (the zero value) or 1 and above turn it off,
	// and Put then pays nothing for it.
	StreamShare float64
}

// Stats is a snapshot of a Buffer's accounting.
type Stats struct {
	// Events and Bytes are held now: queued, being batched, or in flight.
	Events, Bytes int
	// MaxEvents and MaxBytes are the limits.
	MaxEvents, MaxBytes int
}

// Buffer is a bounded, concurrency-safe store of accepted events. Its zero
// value is not usable; create one with New.
type Buffer struct {
	maxEvents, maxBytes int

	ready chan struct{} // capacity 1: kicked after Put and Close

	// events and bytes mirror the locked counters for lock-free reads (Stats,
	// readiness) and for an early ErrFull before Put copies anything.
	events, bytes atomic.Int64

	mem *arena // where entries' Data lives; locks itself

	mu sync.Mutex // protects everything below
	// held counts are authoritative; admission decisions are made under mu.
	heldEvents, heldBytes int
	queue                 []Entry // accepted, not yet taken
	closed                bool
	drain                 drainRate
	keys                  keys
	streams               *streams // nil when Options.StreamShare is off
	// room, when not nil, is closed and cleared the next time room may
	// have appeared (Release, Verify, Close). PutWait and WaitRoom make it
	// only when they must wait: while nobody waits, Release pays one nil
	// check and Put nothing.
	room chan struct{}

	denied deny
}

// New returns an empty Buffer with the given limits. It panics if a limit is
// not positive: that is a programming error, config validates user input.
func New(opts Options) *Buffer {
	if opts.MaxEvents <= 0 || opts.MaxBytes <= 0 {
		panic("buffer: limits must be positive")
	}
	b := &Buffer{
		maxEvents: opts.MaxEvents,
		maxBytes:  opts.MaxBytes,
		ready:     make(chan struct{}, 1),
		mem:       newArena(opts.MaxBytes),
		keys:      newKeys(opts.MaxDatasources, opts.MaxUnverifiedTokens),
		streams:   newStreams(opts.StreamShare, opts.MaxEvents, opts.MaxBytes),
	}
	b.drain.start(time.Now())
	return b
}

// Put stores lines as one entry for key, or nothing at all. Each line is one
// event without its line terminator. Put copies lines into memory of the
// buffer's (see arena), so the caller may reuse them and their backing arrays
// as soon as it returns.
//
// Put never blocks on the consumer (PutWait does). It returns ErrClosed
// after Close, ErrDenied for a denied token, ErrTooLarge when the lines
// could never fit, and ErrFull when they do not fit now:
// ErrTooManyDatasources and ErrTooManyTokens wrap it, for the limits on
// distinct keys, and ErrStreamShare, for a stream past its share (see
// Options.StreamShare). Put with no lines stores nothing and returns nil.
func (b *Buffer) Put(key Key, lines [][]byte) error { return b.PutWaiting(key, lines, nil) }

// PutWaiting is Put for a request whose client waits for delivery: w is
// attached to the entry, and the consumer reports the entry's outcome to it.
// With no lines it stores nothing and w is never told anything.
func (b *Buffer) PutWaiting(key Key, lines [][]byte, w *Waiter) error {
	n := len(lines)
	if n == 0 {
		return nil
	}
	size := Size(lines)
	if err := b.Admits(key, n, size); err != nil {
		return err
	}
	// Refuse early, without copying, when the buffer is visibly full: under
	// overload this keeps the refusal path free of large allocations.
	if !b.fits(int(b.events.Load()), int(b.bytes.Load()), n, size) {
		if b.streams != nil {
			return b.refuseFull(key)
		}
		if b.isClosed() {
			return ErrClosed
		}
		return ErrFull
	}

	data := b.mem.alloc(size)[:0]
	for _, l := range lines {
		data = append(data, l...)
		data = append(data, '\n')
	}
	now := time.Now()

	b.mu.Lock()
	extra, err := b.keys.admit(key, now)
	switch {
	case b.closed:
		err = ErrClosed
	case err != nil:
	case !b.fits(b.heldEvents, b.heldBytes, n, size+extra):
		err = ErrFull
	}
	var s *stream
	if b.streams != nil && (err == nil || err == ErrFull) {
		s, err = b.shareLocked(key, n, size, now, err != nil)
	}
	if err != nil {
		b.mu.Unlock()
		b.mem.release([][]byte{data})
		return err
	}
	key = b.keys.hold(key, n, now)
	if s != nil {
		b.streams.hold(s, n, size)
		b.streams.prune(now)
	}
	b.heldEvents += n
	b.heldBytes += size + extra
	b.events.Store(int64(b.heldEvents))
	b.bytes.Store(int64(b.heldBytes))
	b.queue = append(b.queue, Entry{Key: key, Data: data, Rows: n, Accepted: now.UnixNano(), Waiter: w})
	b.mu.Unlock()

	b.kick()
	return nil
}

// Size is how many bytes lines take in the buffer: each line and its '\n'.
func Size(lines [][]byte) int {
	size := len(lines)
	for _, l := range lines {
		size += len(l)
	}
	return size
}

// Admits returns the error PutWaiting would return for n events of size
// bytes (see Size) for key whatever the buffer held: ErrDenied for a denied
// token, ErrTooLarge when they could never fit, else nil. A store that
// keeps requests elsewhere until the buffer has room (the spool) refuses
// with it what the buffer would never take.
func (b *Buffer) Admits(key Key, n, size int) error {
	if key.Token != "" && b.denied.has(key, time.Now()) {
		return ErrDenied
	}
	// Even in an empty buffer its key's name and token would be charged too.
	if n > b.maxEvents || size+len(key.Datasource)+len(key.Token) > b.maxBytes {
		return ErrTooLarge
	}
	return nil
}

// Fits reports whether n more events of size bytes would fit now, from the
// lock-free counters: a hint, as the answer may change at once.
func (b *Buffer) Fits(n, size int) bool {
	return b.fits(int(b.events.Load()), int(b.bytes.Load()), n, size)
}

// fits reports whether n more events of size bytes fit beside events and
// bytes held. Both admission checks use it: the early one, which spares a
// copy under overload, and the authoritative one under the lock.
func (b *Buffer) fits(events, bytes, n, size int) bool {
	return events+n <= b.maxEvents && bytes+size <= b.maxBytes
}

// Take moves every queued entry to the caller and returns them. The entries
// stay accounted until Release. dst is a slice the caller is done with; when
// it is empty, Take swaps it in as the new queue instead of copying, so a
// consumer that passes back the previous result, once it has copied the
// entries it keeps, allocates nothing in steady state. Take never blocks; it returns dst[:0] when nothing is queued.
func (b *Buffer) Take(dst []Entry) []Entry {
	clear(dst) // drop references to data the caller is done with
	dst = dst[:0]
	b.mu.Lock()
	out := b.queue
	b.queue = dst
	b.mu.Unlock()
	return out
}

// Release ends the accounting of events of key the consumer has delivered
// upstream or dropped, and gives back the memory they were stored in. data
// holds the events' lines: taken entries' Data, or runs of whole lines cut
// from them, each released exactly once. After Release the consumer must
// not read data again: the buffer reuses it for later requests. Release
// does not wait for the consumer or for Put, only for short critical
// sections. key must be the entries' Key as Take returned it, Client
// included: it is how their stream's share is given back. Releasing more
// than is held is a bug; the counters are clamped at zero so one bug
// cannot wedge admission forever.
func (b *Buffer) Release(key Key, events int, data ...[]byte) {
	bytes := b.mem.release(data)
	if events <= 0 && bytes <= 0 {
		return
	}
	now := time.Now()
	b.mu.Lock()
	if b.streams != nil {
		b.streams.release(key, events, bytes, now)
		b.streams.prune(now)
	}
	bytes += b.keys.release(key, events)
	b.heldEvents = max(b.heldEvents-events, 0)
	b.heldBytes = max(b.heldBytes-bytes, 0)
	b.events.Store(int64(b.heldEvents))
	b.bytes.Store(int64(b.heldBytes))
	b.drain.add(now, max(events, 0), max(bytes, 0))
	b.roomLocked()
	b.mu.Unlock()
}

// Ready returns a channel that receives a value after Put stores an entry or
// Close is called. It has capacity one, so many Puts coalesce into one wake-up:
// after a receive, the consumer should Take everything.
func (b *Buffer) Ready() <-chan struct{} { return b.ready }

// Len returns how many events are held: queued, being batched or in flight.
func (b *Buffer) Len() int { return int(b.events.Load()) }

// Stats returns a snapshot of the accounting. It takes no lock.
func (b *Buffer) Stats() Stats {
	return Stats{
		Events:    int(b.events.Load()),
		Bytes:     int(b.bytes.Load()),
		MaxEvents: b.maxEvents,
		MaxBytes:  b.maxBytes,
	}
}

// Fill returns how full the buffer is, as the larger of its event and byte
// fractions, from 0 (empty) to 1 (full).
func (b *Buffer) Fill() float64 {
	s := b.Stats()
	return max(float64(s.Events)/float64(s.MaxEvents), float64(s.Bytes)/float64(s.MaxBytes))
}

// Close makes every later Put fail with ErrClosed. Entries already stored
// stay until taken and released. Close is idempotent and safe to call
// concurrently with Put.
func (b *Buffer) Close() {
	b.mu.Lock()
	b.closed = true
	b.roomLocked() // a PutWait then returns ErrClosed
	b.mu.Unlock()
	b.kick()
}

// Closed reports whether Close was called.
func (b *Buffer) Closed() bool { return b.isClosed() }

func (b *Buffer) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

func (b *Buffer) kick() {
	select {
	case b.ready <- struct{}{}:
	default:
	}
}
