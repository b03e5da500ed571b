package flusher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/clock"
	"github.com/tbproxy/tbproxy/upstream"
)

// deliver sends one batch until upstream acknowledges it, refuses it for
// good, or ctx is cancelled; a batch upstream finds too large (413) is split
// in halves and each half delivered the same way. Attempts share the
// Concurrency slots; a batch waiting out its backoff holds none, so a failing
// key never starves others. The first attempt's slot was taken by startSends.
func (f *Flusher) deliver(ctx context.Context, b *batch) result {
	var r result
	f.send(ctx, b, &r, true)
	return r
}

func (f *Flusher) send(ctx context.Context, b *batch, r *result, haveSlot bool) {
	f.m.batchEvents.Observe(float64(b.Rows))
	f.m.batchBytes.Observe(float64(b.Bytes))
	bounded := 0 // attempts that failed in a way that bounds its own retries
	for attempt := 1; ; attempt++ {
		if !haveSlot {
			select {
			case f.sem <- struct{}{}:
			case <-ctx.Done():
				r.leftover = append(r.leftover, b)
				return
			}
		}
		haveSlot = false
		start := time.Now()
		actx, cancel := context.WithDeadline(ctx, f.attemptDeadline(start))
		b.sent = true
		res, err := f.opts.Upstream.Send(actx, &b.Batch)
		cancel()
		f.releaseSlot()
		f.m.observeAttempt(statusOf(res, err), err == nil, time.Since(start))

		wait, retry := upstream.Retryable(err)
		if retry {
			f.lastFailed.Store(time.Now().UnixNano())
		} else {
			f.lastOK.Store(time.Now().UnixNano())
		}
		var re *upstream.RetryableError
		if errors.As(err, &re) {
			f.ledger.failed(b.Key, re, time.Now())
		}
		if retry && errors.As(err, &re) && re.MaxAttempts > 0 {
			if bounded++; bounded >= re.MaxAttempts {
				f.drop(b, &upstream.StatusError{Status: cmp.Or(re.Status, http.StatusBadGateway),
					Message: fmt.Sprintf("upstream kept failing after %d attempts: %s", bounded, cmp.Or(re.Public, re.Err.Error())),
					Detail:  fmt.Sprintf("gave up after %d attempts failing so: %v", bounded, re.Err)}, r)
				return
			}
		}
		if err == nil {
			f.delivered(b, res, r, attempt, time.Since(start))
			return
		}
		if !retry {
			var se *upstream.StatusError
			if errors.As(err, &se) && se.Status == http.StatusRequestEntityTooLarge && b.Rows > 1 {
				first, second := b.split()
				f.log.Warn("upstream found the batch too large, sending it in halves",
					"datasource", b.Key.Datasource, "events", b.Rows, "bytes", b.Bytes)
				f.m.splits.Inc()
				f.send(ctx, first, r, false)
				f.send(ctx, second, r, false)
				return
			}
			f.drop(b, err, r)
			return
		}
		if wait <= 0 {
			wait = f.backoff(attempt)
		}
		if attempt&(attempt-1) == 0 { // attempts 1, 2, 4, 8…: no log storm in a long outage
			f.log.Warn("upstream send failed, will retry", "datasource", b.Key.Datasource,
				"events", b.Rows, "attempt", attempt, "retry_in", wait.String(), "err", err)
		}
		f.m.retries.Inc()
		if !clock.Sleep(ctx, wait) {
			r.leftover = append(r.leftover, b)
			return
		}
	}
}

func (f *Flusher) delivered(b *batch, res upstream.Result, r *result, attempt int, took time.Duration) {
	f.log.Debug("batch delivered", "datasource", b.Key.Datasource, "events", b.Rows,
		"bytes", b.Bytes, "attempt", attempt, "took", took.String())
	f.m.delivered.Add(float64(res.SuccessfulRows))
	f.m.quarantined.Add(float64(res.QuarantinedRows))
	short := b.Rows - res.SuccessfulRows - res.QuarantinedRows
	f.ledger.delivered(b.Key, res, max(short, 0), time.Now())
	if short > 0 {
		f.m.dropped.WithLabelValues(reasonUpstreamShortAck).Add(float64(short))
		f.log.Error("upstream acknowledged fewer rows than were sent", "datasource", b.Key.Datasource,
			"sent", b.Rows, "successful_rows", res.SuccessfulRows, "quarantined_rows", res.QuarantinedRows,
			"reason", reasonUpstreamShortAck)
	}
	f.buf.Verify(b.Key.Token) // a client's token upstream accepted
	b.finishWaiters(res, nil)
	r.release(b)
	r.hold = max(r.hold, res.HoldFor)
}

// drop gives up on b for a reason that retrying cannot fix: it is counted,
// logged, written to the dead-letter directory, and its waiting clients get
// upstream's answer. A 403 for a client's own token (pass-through mode)
// makes the buffer refuse that token for that datasource for TokenDenyTTL.
func (f *Flusher) drop(b *batch, err error, r *result) {
	failure := &buffer.Failure{Status: http.StatusBadGateway, Message: err.Error(), Reason: reasonUpstreamRejected}
	var se *upstream.StatusError
	if errors.As(err, &se) {
		failure.Status, failure.Message, failure.Detail = se.Status, se.Message, se.Detail
		switch {
		case se.Status == http.StatusUnprocessableEntity:
			failure.Reason = reasonUpstreamPartial
		case se.Status == http.StatusRequestEntityTooLarge:
			failure.Reason = reasonRowTooLarge
		}
	}
	f.m.dropped.WithLabelValues(failure.Reason).Add(float64(b.Rows))
	path := f.dead.Write(&b.Batch, failure)
	f.ledger.dropped(b.Key, b.Rows, failure, path != "", time.Now())
	f.log.Error("batch dropped", "datasource", b.Key.Datasource, "events", b.Rows,
		"reason", failure.Reason, "status", failure.Status, "err", err, "dead_letter", path)
	if failure.Status == http.StatusForbidden && b.Key.Token != "" && f.opts.TokenDenyTTL > 0 {
		f.buf.Deny(b.Key, time.Now().Add(f.opts.TokenDenyTTL))
	}
	b.finishWaiters(upstream.Result{}, failure)
	r.release(b)
}

// attemptDeadline is when an attempt started at now must give up: never
// later than the drain deadline, so a hard stop does not wait on a send.
func (f *Flusher) attemptDeadline(now time.Time) time.Time {
	d := now.Add(24 * time.Hour) // the upstream applies its own timeout
	if n := f.drainDeadline.Load(); n != 0 {
		d = time.Unix(0, n)
	}
	return d
}

// backoff returns the wait before retry number attempt: exponential from
// MinBackoff, capped at MaxBackoff, with equal jitter so that many batches
// failing together do not retry together.
func (f *Flusher) backoff(attempt int) time.Duration {
	d := f.opts.MinBackoff
	for i := 1; i < attempt && d < f.opts.MaxBackoff; i++ {
		d *= 2 // stops at MaxBackoff, long before it could overflow
	}
	d = min(d, f.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

func statusOf(res upstream.Result, err error) int {
	var re *upstream.RetryableError
	var se *upstream.StatusError
	switch {
	case err == nil:
		return res.Status
	case errors.As(err, &re):
		return re.Status
	case errors.As(err, &se):
		return se.Status
	}
	return 0
}
