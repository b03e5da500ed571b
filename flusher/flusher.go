// Package flusher takes events from the buffer, groups them into batches per
// token and datasource, and delivers each batch upstream with retries. Events
// leave the buffer's accounting only once upstream acknowledged them or they
// were dropped for a reason that is logged and counted.
package flusher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/upstream"
)

// Sender delivers batches somewhere: Tinybird's Events API
// (upstream/tinybird), a ClickHouse server (upstream/clickhouse), or a
// local directory (upstream/filesink). Send returns nil only when the
// upstream acknowledged the batch. A failure worth retrying is reported as
// an error wrapping a *upstream.RetryableError; any other error means
// retrying cannot help and the batch is dropped (a *upstream.StatusError
// carries the status waiting clients are told). Send must honour ctx's
// deadline and must not keep b, or its Parts, after it returns.
// Implementations are safe for concurrent use.
type Sender interface {
	Send(ctx context.Context, b *upstream.Batch) (upstream.Result, error)
}

// Options configure a Flusher. Zero values are replaced by the defaults
// noted on each field.
type Options struct {
	// Upstream receives the batches. Required.
	Upstream Sender
	// BatchRows and BatchBytes cut a batch (defaults 100,000 and 10 MiB).
	BatchRows, BatchBytes int
	// FlushInterval sends a batch this long after its first event even if it
	// is not full (default 1s).
	FlushInterval time.Duration
	// Concurrency bounds the upstream requests in flight at once (default 4).
	Concurrency int
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// retries (defaults 100ms and 10s). A Retry-After from upstream wins.
	MinBackoff, MaxBackoff time.Duration
	// DrainTimeout bounds delivery after Run's context ends (default 30s).
	DrainTimeout time.Duration
	// DeadLetters, when set, receives every dropped batch (see the
	// deadletter package); nil, or a Writer that is off, keeps none.
	DeadLetters *deadletter.Writer
	// TokenDenyTTL, when positive, makes the buffer refuse a client token
	// (pass-through mode) for this long after upstream answered it 403.
	TokenDenyTTL time.Duration
	// RetainOnShutdown says a durable store (the spool) keeps whatever the
	// drain could not deliver for the next start: it is then logged, not
	// dead-lettered or counted as dropped, and Run returns nil.
	RetainOnShutdown bool
	// MaxStreams bounds the streams whose stats are kept for Streams, and
	// the datasource label values of the per-datasource metrics (default
	// 1000; MAX_DATASOURCES).
	MaxStreams int
}

func (o *Options) setDefaults() {
	if o.BatchRows <= 0 {
		o.BatchRows = 100_000
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 10 << 20
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = time.Second
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(10*time.Second, o.MinBackoff)
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
}

// ErrUndelivered is wrapped by Run's error when acknowledged events were
// still undelivered at the drain deadline.
var ErrUndelivered = errors.New("acknowledged events were not delivered")

// Flusher moves events from a buffer to an upstream. Create one with New and
// call Run once.
type Flusher struct {
	buf    *buffer.Buffer
	opts   Options
	policy policy
	log    *slog.Logger
	m      *metrics

	sem     chan struct{} // one token per upstream request in flight
	freed   chan struct{} // capacity 1: kicked when a sem token is returned
	results chan result
	senders sync.WaitGroup

	// drainDeadline is set once draining starts (Unix nanoseconds); no
	// upstream attempt is given a deadline past it.
	drainDeadline atomic.Int64
	// lastOK and lastFailed are when an upstream attempt last got an
	// answer, and last failed in a way worth retrying (Unix nanoseconds).
	lastOK, lastFailed atomic.Int64
	// oldestNanos is the Accepted time of the oldest held event, refreshed
	// by the loop, read by the metrics scrape. Zero when nothing is held.
	oldestNanos atomic.Int64

	dead *deadletter.Writer // never nil; off when Options.DeadLetters is unset

	// ledger keeps per-stream stats and the paused datasources; control
	// wakes the loop for Flush and Resume, with flushes naming what to seal.
	ledger  *ledger
	control chan struct{} // capacity 1
	ctlMu   sync.Mutex
	flushes map[string]bool // datasources to seal now; "" for all

	// Owned by the Run goroutine.
	streams  map[buffer.Key]*stream
	runnable []*stream // streams that may have a batch to start; see wake
	leftover []*batch  // pieces abandoned at a hard stop
}

// gatherDelay is how long the loop lets requests gather in the buffer after
// it signals before taking them. Without it the loop wakes for every
// request, which at tens of thousands of one-event requests a second costs
// more CPU than the batches' compression; a millisecond is nothing next to
// the flush interval.
const gatherDelay = time.Millisecond

// result is what a sender reports back to the loop about one batch. A batch
// split after a 413 reports all its pieces in one result.
type result struct {
	s *stream
	// relRows rows, stored in relData, were delivered or dropped; the rest
	// of the batch was abandoned at a hard stop and is still held.
	relRows  int
	relData  [][]byte
	leftover []*batch // abandoned pieces, for the dead-letter file
	hold     time.Duration
}

// release notes that b's rows were delivered or dropped: the loop gives
// their memory back to the buffer.
func (r *result) release(b *batch) {
	r.relRows += b.Rows
	r.relData = append(r.relData, b.Parts...)
}

// New returns a Flusher that drains buf into opts.Upstream. Metrics are
// registered on reg; an error means a metric was already registered.
func New(buf *buffer.Buffer, opts Options, reg prometheus.Registerer, log *slog.Logger) (*Flusher, error) {
	if opts.Upstream == nil {
		return nil, errors.New("flusher: no upstream")
	}
	opts.setDefaults()
	f := &Flusher{
		buf:     buf,
		opts:    opts,
		policy:  policy{rows: opts.BatchRows, bytes: opts.BatchBytes, interval: opts.FlushInterval},
		log:     log,
		sem:     make(chan struct{}, opts.Concurrency),
		freed:   make(chan struct{}, 1),
		results: make(chan result),
		streams: make(map[buffer.Key]*stream),
		dead:    opts.DeadLetters,
		control: make(chan struct{}, 1),
		flushes: make(map[string]bool),
	}
	if f.dead == nil {
		f.dead = new(deadletter.Writer) // off: its zero value keeps nothing
	}
	m, err := newMetrics(reg, buf, f.oldestAge)
	if err != nil {
		return nil, fmt.Errorf("flusher: register metrics: %w", err)
	}
	f.m = m
	dsm := newDSMetrics()
	for _, c := range dsm.collectors() {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("flusher: register metrics: %w", err)
		}
	}
	f.ledger = newLedger(opts.MaxStreams, dsm)
	return f, nil
}

// Run delivers batches until ctx ends, then drains: every batch is sent at
// once, and Run returns nil when everything the buffer held was delivered or
// dropped. If that takes longer than DrainTimeout, in-flight attempts are
// abandoned, what is left is logged and counted as dropped with reason
// shutdown_timeout, and the error wraps ErrUndelivered. Close the buffer
// before ctx ends, or new events keep the drain going until its deadline.
// Run blocks; call it once.
func (f *Flusher) Run(ctx context.Context) error {
	sendCtx, hardStop := context.WithCancel(context.Background())
	defer hardStop()

	var (
		taken     []buffer.Entry
		done      = ctx.Done()
		draining  bool
		drainEnd  <-chan time.Time
		timer     = time.NewTimer(time.Hour)
		nextFlush time.Time // zero: no batch is waiting on the interval
		refreshed time.Time
		// gather delays each Take by gatherDelay after the buffer signals,
		// so one wake-up of this loop takes many requests rather than one.
		gather    = time.NewTimer(time.Hour)
		gathering bool
	)
	timer.Stop()
	defer timer.Stop()
	gather.Stop()
	defer gather.Stop()
	take := func() { // moves what the buffer queued into the streams
		taken = f.buf.Take(taken)
		now := time.Now()
		f.ledger.taken(taken, now)
		for _, e := range taken {
			s := f.stream(e.Key)
			wasOpen := s.open != nil
			s.add(e, f.policy, now)
			f.wake(s)
			if !wasOpen && s.open != nil && (nextFlush.IsZero() || s.openedAt.Add(f.policy.interval).Before(nextFlush)) {
				nextFlush = s.openedAt.Add(f.policy.interval)
			}
		}
	}

	for {
		if draining && f.buf.Len() == 0 {
			f.senders.Wait() // every batch was finished, so they are exiting
			f.refreshOldest()
			return nil
		}
		ready := f.buf.Ready()
		if gathering {
			ready = nil // the Take is due anyway: do not wake for every request
		}
		select {
		case <-ready:
			if !draining {
				gathering = true
				gather.Reset(gatherDelay)
				continue
			}
			take()
		case <-gather.C:
			gathering = false
			take()
		case <-timer.C:
			nextFlush = f.sealDue(time.Now())
		case r := <-f.results:
			if t := f.finish(r, time.Now()); !t.IsZero() && (nextFlush.IsZero() || t.Before(nextFlush)) {
				nextFlush = t
			}
		case <-f.freed:
		case <-f.control:
			f.applyControl()
		case <-done:
			done = nil
			draining = true
			f.resumeAll() // a drain delivers everything, paused or not
			deadline := time.Now().Add(f.opts.DrainTimeout)
			f.drainDeadline.Store(deadline.UnixNano())
			drainEnd = time.After(f.opts.DrainTimeout)
			f.log.Info("draining", "held_events", f.buf.Len(), "timeout", f.opts.DrainTimeout.String())
			f.policy.interval = 0 // from now on every batch is due at once
			nextFlush = f.sealDue(time.Now())
		case <-drainEnd:
			hardStop()
			return f.abandon()
		}
		f.startSends(sendCtx)
		if !nextFlush.IsZero() {
			timer.Reset(time.Until(nextFlush))
		}
		if now := time.Now(); now.Sub(refreshed) > 250*time.Millisecond {
			refreshed = now
			f.refreshOldest()
		}
	}
}

func (f *Flusher) stream(k buffer.Key) *stream {
	s := f.streams[k]
	if s == nil {
		s = &stream{key: k}
		f.streams[k] = s
	}
	return s
}

// sealDue seals every batch whose interval has passed, lifts holds that
// ended, and returns when the next batch or hold is due (zero if none).
func (f *Flusher) sealDue(now time.Time) time.Time {
	var next time.Time
	for _, s := range f.streams {
		if !s.holdUntil.IsZero() {
			if now.Before(s.holdUntil) {
				if next.IsZero() || s.holdUntil.Before(next) {
					next = s.holdUntil
				}
			} else {
				s.holdUntil = time.Time{}
				f.wake(s)
			}
		}
		if s.open == nil {
			continue
		}
		if f.policy.due(s.openedAt, now) {
			s.seal()
			f.wake(s)
			continue
		}
		if due := s.openedAt.Add(f.policy.interval); next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next
}

// wake notes that s may have a batch ready to start. It keeps startSends
// proportional to the streams that changed, not to every stream there is.
// A paused datasource's streams are not woken: Resume wakes them.
func (f *Flusher) wake(s *stream) {
	if !s.runnable && s.inflight == nil && len(s.ready) > 0 && s.holdUntil.IsZero() && !f.ledger.isPaused(s.key.Datasource) {
		s.runnable = true
		f.runnable = append(f.runnable, s)
	}
}

// startSends starts a sender for each runnable stream while upstream slots
// are free. The slot is taken here, before the goroutine exists, so the
// number of senders is bounded by the slots plus the batches waiting out a
// backoff, never by how many keys clients invent.
func (f *Flusher) startSends(ctx context.Context) {
	started := 0
	for _, s := range f.runnable {
		select {
		case f.sem <- struct{}{}:
		default:
			// No slot: the rest stay runnable until one is returned (freed).
			n := copy(f.runnable, f.runnable[started:])
			clear(f.runnable[n:])
			f.runnable = f.runnable[:n]
			return
		}
		started++
		s.runnable = false
		var b *batch
		if !f.ledger.isPaused(s.key.Datasource) { // paused since it was woken: Resume wakes it again
			b = s.next(f.policy)
		}
		if b == nil {
			f.releaseSlot()
			continue
		}
		f.m.inflight.Inc()
		f.ledger.started(s.key, time.Now())
		f.senders.Go(func() {
			r := f.deliver(ctx, b)
			r.s = s
			f.results <- r
		})
	}
	clear(f.runnable)
	f.runnable = f.runnable[:0]
}

func (f *Flusher) releaseSlot() {
	<-f.sem
	select {
	case f.freed <- struct{}{}:
	default:
	}
}

// finish applies a delivery's outcome: the buffer's accounting, and a hold
// on the stream when upstream said its rate limit is spent. It returns when
// the hold ends (zero if none). It runs on the loop goroutine.
func (f *Flusher) finish(r result, now time.Time) time.Time {
	f.m.inflight.Dec()
	r.s.inflight = nil
	f.buf.Release(r.s.key, r.relRows, r.relData...)
	f.ledger.finished(r.s.key, r.relRows, r.relData, now)
	f.leftover = append(f.leftover, r.leftover...)
	var until time.Time
	if r.hold > 0 {
		until = now.Add(r.hold)
		r.s.holdUntil = until
	}
	f.wake(r.s)
	if r.s.idle() {
		delete(f.streams, r.s.key)
	}
	return until
}

// abandon ends a drain that ran out of time: it waits for the senders (they
// stop at once: their context is cancelled and no attempt started during the
// drain outlives its deadline), then dead-letters, logs and counts
// everything still held as lost.
func (f *Flusher) abandon() error {
	go func() {
		f.senders.Wait()
		close(f.results)
	}()
	for r := range f.results {
		f.finish(r, time.Now())
	}
	lost := f.buf.Len()
	f.refreshOldest()
	if lost == 0 {
		return nil
	}
	if f.opts.RetainOnShutdown {
		retained := &buffer.Failure{Status: 503, Reason: reasonShutdownTimeout, Retained: true,
			Message: "the proxy shut down before upstream acknowledged these rows; they are kept and will be delivered " +
				"after it restarts (or by another replica), so retrying this request may create duplicates"}
		for _, b := range f.heldBatches() {
			b.finishWaiters(upstream.Result{}, retained)
		}
		f.log.Warn("shutdown timeout: undelivered events stay in the spool and will be delivered after the next start",
			"events", lost, "timeout", f.opts.DrainTimeout.String())
		return nil
	}
	notWritten := &buffer.Failure{Status: 503, Reason: reasonShutdownTimeout,
		Message: "the proxy shut down before these rows were sent upstream; they were not written"}
	maybeWritten := &buffer.Failure{Status: 503, Reason: reasonShutdownTimeout,
		Message: "the proxy shut down before upstream acknowledged these rows; an upload of them was started, so they may have been written"}
	for _, b := range f.heldBatches() {
		failure := notWritten
		if b.sent {
			failure = maybeWritten
		}
		f.dead.Write(&b.Batch, failure)
		b.finishWaiters(upstream.Result{}, failure)
	}
	f.m.dropped.WithLabelValues(reasonShutdownTimeout).Add(float64(lost))
	f.log.Error("shutdown timeout: acknowledged events were not delivered",
		"events", lost, "reason", reasonShutdownTimeout, "timeout", f.opts.DrainTimeout.String(),
		"dead_letter_dir", f.dead.Dir())
	return fmt.Errorf("%w: %d events still held after %s", ErrUndelivered, lost, f.opts.DrainTimeout)
}

// heldBatches collects every batch still held after a hard stop: pieces
// abandoned in flight, batches waiting or growing, and entries never taken.
func (f *Flusher) heldBatches() []*batch {
	out := f.leftover
	for _, s := range f.streams {
		out = append(out, s.ready...)
		if s.open != nil { // never empty: a batch opens to take rows
			out = append(out, s.open)
		}
	}
	for _, e := range f.buf.Take(nil) {
		b := newBatch(e.Key, 0)
		b.add(e.Data, e.Rows, e.Accepted, e.Waiter)
		out = append(out, b)
	}
	return out
}

// Healthy reports whether upstream looks reachable: true until an attempt
// fails with a network error, a timeout, a 429 or a 5xx, and again once an
// attempt gets any other answer. Safe for concurrent use.
func (f *Flusher) Healthy() bool { return f.lastFailed.Load() <= f.lastOK.Load() }

func (f *Flusher) refreshOldest() {
	var oldest int64
	each := make(map[buffer.Key]int64, len(f.streams))
	for _, s := range f.streams {
		if t, ok := s.oldest(); ok {
			each[s.key] = t
			if oldest == 0 || t < oldest {
				oldest = t
			}
		}
	}
	f.oldestNanos.Store(oldest)
	f.ledger.setOldest(each, time.Now())
}

func (f *Flusher) oldestAge() time.Duration {
	n := f.oldestNanos.Load()
	if n == 0 || f.buf.Len() == 0 {
		return 0
	}
	return time.Since(time.Unix(0, n))
}

// Streams returns what the flusher knows of each stream, by datasource then
// token id: held, accepted, delivered, dropped, in flight, upstream's last
// answer, paused. Streams idle for 15 minutes are forgotten. Safe for
// concurrent use.
func (f *Flusher) Streams() []StreamStats { return f.ledger.snapshot() }

// Pause holds delivery of datasource's streams: nothing more of it is sent
// (a batch in flight finishes) until Resume, while the buffer keeps
// accepting its events up to its limits. Pauses are per process, not
// persisted, and lifted when the drain at shutdown starts. It reports
// whether the datasource was not paused yet. Safe for concurrent use.
func (f *Flusher) Pause(datasource string) bool { return f.ledger.setPaused(datasource, true) }

// Resume lifts Pause; it reports whether the datasource was paused.
func (f *Flusher) Resume(datasource string) bool {
	ok := f.ledger.setPaused(datasource, false)
	f.kickLoop() // wake its streams
	return ok
}

// Flush sends what is held for datasource ("" for every one) now, without
// waiting for FLUSH_INTERVAL; a paused datasource stays paused. Safe for
// concurrent use.
func (f *Flusher) Flush(datasource string) {
	f.ctlMu.Lock()
	f.flushes[datasource] = true
	f.ctlMu.Unlock()
	f.kickLoop()
}

// kickLoop makes the loop run applyControl.
func (f *Flusher) kickLoop() {
	select {
	case f.control <- struct{}{}:
	default: // a kick is pending and will see this one's work too
	}
}

// applyControl runs on the loop: it seals the batches Flush asked for and
// wakes every stream (Resume).
func (f *Flusher) applyControl() {
	f.ctlMu.Lock()
	flushes := f.flushes
	f.flushes = make(map[string]bool)
	f.ctlMu.Unlock()
	for _, s := range f.streams {
		if s.open != nil && (flushes[""] || flushes[s.key.Datasource]) {
			s.seal()
		}
		f.wake(s)
	}
}

// resumeAll lifts every pause, for the drain.
func (f *Flusher) resumeAll() {
	for _, st := range f.ledger.snapshot() {
		if st.Paused && f.ledger.setPaused(st.Datasource, false) {
			f.log.Info("resuming a paused datasource for the shutdown drain", "datasource", st.Datasource)
		}
	}
	for _, s := range f.streams {
		f.wake(s)
	}
}
