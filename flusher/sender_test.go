package flusher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/poll"
	"github.com/tbproxy/tbproxy/upstream"
)

// script is the flusher tests' upstream: a Sender that records every batch
// it is given and answers each Send with a reply, taken from a queue
// (newScript) or chosen by a function per call (scriptFunc). It tests the
// flusher's loop with no HTTP client in the way; what Tinybird's HTTP
// answers mean (a 429's Retry-After, a 200's counts, X-RateLimit-Remaining)
// is tested in upstream/tinybird, and these tests script the mapped values.
// Safe for concurrent use.
type script struct {
	choose func(c call) reply // nil: the queue, then ack
	open   chan struct{}      // one token per held Send let through

	mu      sync.Mutex    // protects the fields below
	queue   []reply       // answers the next Sends, in order
	calls   []call        // every Send, in the order they began
	seen    int           // calls already returned by next
	changed chan struct{} // closed and replaced whenever calls changes
}

// call is one Send the script received, as the upstream saw it, and how it
// was answered.
type call struct {
	Datasource, Token string
	Data              string // the batch's NDJSON, every line ending in '\n'
	Rows              int
	At                time.Time // when Send began
	Deadline          time.Time // the deadline of Send's ctx; zero if none
	Answered          bool      // Send has returned
	Res               upstream.Result
	Err               error
}

// acked reports whether Send returned and acknowledged the batch.
func (c call) acked() bool { return c.Answered && c.Err == nil }

// status is the HTTP status the answer carried, as the flusher's
// tbproxy_upstream_requests_total reads it: 0 for none.
func (c call) status() int {
	var re *upstream.RetryableError
	var se *upstream.StatusError
	switch {
	case errors.As(c.Err, &re):
		return re.Status
	case errors.As(c.Err, &se):
		return se.Status
	}
	return c.Res.Status
}

// A reply answers one Send. It may block, and must return when ctx ends.
type reply func(ctx context.Context, b *upstream.Batch) (upstream.Result, error)

// ack acknowledges the whole batch, with no HTTP status (as the file sink).
func ack(_ context.Context, b *upstream.Batch) (upstream.Result, error) {
	return upstream.Result{SuccessfulRows: b.Rows}, nil
}

// ackStatus acknowledges the whole batch with an HTTP status.
func ackStatus(status int) reply {
	return func(_ context.Context, b *upstream.Batch) (upstream.Result, error) {
		return upstream.Result{Status: status, SuccessfulRows: b.Rows}, nil
	}
}

// answer acknowledges the batch with res as it is: short counts,
// quarantined rows, a rate-limit hold.
func answer(res upstream.Result) reply {
	return func(context.Context, *upstream.Batch) (upstream.Result, error) { return res, nil }
}

// fail answers err.
func fail(err error) reply {
	return func(context.Context, *upstream.Batch) (upstream.Result, error) { return upstream.Result{}, err }
}

// retryable answers a *upstream.RetryableError with status and upstream's
// requested wait (0: the flusher's own backoff).
func retryable(status int, after time.Duration) reply {
	return fail(&upstream.RetryableError{Status: status, RetryAfter: after,
		Err: fmt.Errorf("upstream answered %d", status)})
}

// refused answers a *upstream.StatusError: a refusal retrying cannot fix.
func refused(status int, message string) reply {
	return fail(&upstream.StatusError{Status: status, Message: message})
}

// newScript returns a script that answers its first Sends with replies, in
// order, and acks every one after them.
func newScript(replies ...reply) *script {
	return &script{open: make(chan struct{}, 1024), queue: replies, changed: make(chan struct{})}
}

// scriptFunc returns a script that answers each Send with choose's reply
// for it; c is the call as received, not yet answered. Sends run
// concurrently, so choose may be called concurrently.
func scriptFunc(choose func(c call) reply) *script {
	s := newScript()
	s.choose = choose
	return s
}

// gated returns a script that holds every Send until the test lets it
// through (let), then acks it.
func gated() *script {
	s := newScript()
	s.choose = func(call) reply { return s.held(ack) }
	return s
}

func (s *script) Send(ctx context.Context, b *upstream.Batch) (upstream.Result, error) {
	var data bytes.Buffer
	if _, err := b.WriteTo(&data); err != nil {
		return upstream.Result{}, err
	}
	c := call{Datasource: b.Key.Datasource, Token: b.Key.Token, Data: data.String(), Rows: b.Rows, At: time.Now()}
	c.Deadline, _ = ctx.Deadline()
	s.mu.Lock()
	i := len(s.calls)
	s.calls = append(s.calls, c)
	r := reply(ack)
	if s.choose == nil && len(s.queue) > 0 {
		r, s.queue = s.queue[0], s.queue[1:]
	}
	s.changedLocked()
	s.mu.Unlock()
	if s.choose != nil {
		r = s.choose(c)
	}

	res, err := r(ctx, b)

	s.mu.Lock()
	s.calls[i].Answered, s.calls[i].Res, s.calls[i].Err = true, res, err
	s.changedLocked()
	s.mu.Unlock()
	return res, err
}

func (s *script) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// held returns a reply that blocks until the test lets it through (let),
// then answers then; if ctx ends first, it answers a retryable error.
func (s *script) held(then reply) reply {
	return func(ctx context.Context, b *upstream.Batch) (upstream.Result, error) {
		select {
		case <-s.open:
			return then(ctx, b)
		case <-ctx.Done():
			return upstream.Result{}, &upstream.RetryableError{Err: ctx.Err()}
		}
	}
}

// let lets n held Sends through, now or when they come.
func (s *script) let(n int) {
	for range n {
		s.open <- struct{}{}
	}
}

// until waits for cond, checked on the calls each time they change, and
// fails the test, naming what, if it does not hold within poll.Timeout.
func (s *script) until(t *testing.T, what string, cond func(calls []call) bool) {
	t.Helper()
	deadline := time.NewTimer(poll.Timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok, changed := cond(s.calls), s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", poll.Timeout, what)
		}
	}
}

// next returns the next Send the test has not seen yet, once it began.
func (s *script) next(t *testing.T) call {
	t.Helper()
	s.until(t, "a batch to be sent", func(calls []call) bool { return len(calls) > s.seen })
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen++
	return s.calls[s.seen-1]
}

// waitAcked waits until at least n rows were acknowledged.
func (s *script) waitAcked(t *testing.T, n int) {
	t.Helper()
	s.until(t, fmt.Sprintf("%d rows acknowledged", n), func(calls []call) bool { return ackedRows(calls, "") >= n })
}

// sends returns a copy of every call so far.
func (s *script) sends() []call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]call(nil), s.calls...)
}

// acked returns the rows of acknowledged batches for ds, or for every
// datasource when ds is "".
func (s *script) acked(ds string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ackedRows(s.calls, ds)
}

func ackedRows(calls []call, ds string) int {
	n := 0
	for _, c := range calls {
		if c.acked() && (ds == "" || c.Datasource == ds) {
			n += c.Rows
		}
	}
	return n
}

// ackedLines returns the lines of acknowledged batches for ds (every
// datasource when ds is ""), without their '\n', in the order they were sent.
func (s *script) ackedLines(ds string) []string {
	var out []string
	for _, c := range s.sends() {
		if c.acked() && (ds == "" || c.Datasource == ds) {
			out = append(out, c.lines()...)
		}
	}
	return out
}

// lines returns the batch's lines without their '\n'.
func (c call) lines() []string {
	var out []string
	for l := range strings.Lines(c.Data) {
		out = append(out, strings.TrimSuffix(l, "\n"))
	}
	return out
}

// statuses counts the answered calls by status, as fakebird's StatusCounts.
func (s *script) statuses() map[int]int {
	out := map[int]int{}
	for _, c := range s.sends() {
		if c.Answered {
			out[c.status()]++
		}
	}
	return out
}
