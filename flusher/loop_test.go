package flusher

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// TestRowsArrivingDuringASendAreKept: rows that do not fit the batch in
// flight start a new one; when the send ends, that batch is still there to
// send, here by the drain at shutdown.
func TestRowsArrivingDuringASendAreKept(t *testing.T) {
	g := gated()
	h := startFlusher(t, g, Options{BatchRows: 2, FlushInterval: time.Hour, DrainTimeout: 2 * time.Second})
	k := buffer.Key{Datasource: "ds"}
	// Two rows fill a batch, sent at once; the third waits in a new one.
	h.put(t, k, event(0), event(1), event(2))
	if got := g.next(t); got.Rows != 2 || strings.Count(got.Data, "\n") != 2 {
		t.Fatalf("first batch %q; want 2 rows", got.Data)
	}
	g.let(1)
	poll.Until(t, "the first batch's rows released", func() bool { return h.buf.Len() == 1 })
	g.let(1)
	if err := h.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := g.acked("ds"); got != 3 {
		t.Errorf("%d rows acknowledged; want 3", got)
	}
}

// TestStreamsAreForgottenWhenIdle: the flusher's state for a datasource
// goes once the datasource has nothing left to send, so a proxy that sees
// many datasources over time does not grow with them.
func TestStreamsAreForgottenWhenIdle(t *testing.T) {
	g := gated()
	h := startFlusher(t, g, Options{FlushInterval: time.Millisecond})
	const n = 50
	g.let(n)
	for i := range n {
		h.put(t, buffer.Key{Datasource: fmt.Sprintf("ds_%d", i)}, event(i))
	}
	poll.Until(t, "every row delivered", func() bool { return h.buf.Len() == 0 })
	if err := h.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Run has returned: its state can be read.
	if len(h.f.streams) != 0 {
		t.Errorf("%d datasources still have state after delivering everything; want 0", len(h.f.streams))
	}
}

// TestOptionDefaults: what an operator sets is used as given, and what is
// left unset (zero) gets the documented default.
func TestOptionDefaults(t *testing.T) {
	for _, tc := range []struct {
		in, want Options
	}{
		{Options{}, Options{FlushInterval: time.Second, MinBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second}},
		{Options{FlushInterval: 5 * time.Millisecond, MinBackoff: 7 * time.Millisecond, MaxBackoff: 20 * time.Millisecond},
			Options{FlushInterval: 5 * time.Millisecond, MinBackoff: 7 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}},
		{Options{MinBackoff: time.Second, MaxBackoff: time.Second}, Options{FlushInterval: time.Second, MinBackoff: time.Second, MaxBackoff: time.Second}},
		{Options{MinBackoff: 20 * time.Second}, Options{FlushInterval: time.Second, MinBackoff: 20 * time.Second, MaxBackoff: 20 * time.Second}},
	} {
		got := tc.in
		got.setDefaults()
		if got.FlushInterval != tc.want.FlushInterval || got.MinBackoff != tc.want.MinBackoff || got.MaxBackoff != tc.want.MaxBackoff {
			t.Errorf("%+v: interval %s, backoff %s..%s; want %s, %s..%s", tc.in, got.FlushInterval, got.MinBackoff, got.MaxBackoff,
				tc.want.FlushInterval, tc.want.MinBackoff, tc.want.MaxBackoff)
		}
	}
}

// TestOldestEventAge: tbproxy_buffer_oldest_event_age_seconds is the age of
// the oldest event still held, not of the newest, while upstream holds
// every batch.
func TestOldestEventAge(t *testing.T) {
	g := gated()
	h := startFlusher(t, g, Options{FlushInterval: time.Millisecond})
	h.put(t, buffer.Key{Datasource: "old"}, event(0))
	time.Sleep(600 * time.Millisecond)
	newest := time.Now()
	// Newer events keep the loop turning past two refreshes of the gauge.
	i := 0
	for time.Since(newest) < 600*time.Millisecond {
		i++
		h.put(t, buffer.Key{Datasource: "new"}, event(i))
		time.Sleep(20 * time.Millisecond)
	}
	if age := h.f.oldestAge(); age < time.Since(newest)+300*time.Millisecond {
		t.Errorf("oldest event age %s; want the first event's, over %s", age, time.Since(newest)+300*time.Millisecond)
	}
	g.let(i + 1)
}

// TestNonHTTPSuccessCountsAsOK: an acknowledgement without an HTTP status
// (the file sink's) is counted under tbproxy_upstream_requests_total
// {code="ok"}, once per batch.
func TestNonHTTPSuccessCountsAsOK(t *testing.T) {
	g := gated()
	h := startFlusher(t, g, Options{FlushInterval: time.Hour})
	g.let(2)
	h.put(t, buffer.Key{Datasource: "page_views"}, event(1), event(2))
	h.put(t, buffer.Key{Datasource: "page_views"}, event(3))
	h.put(t, buffer.Key{Datasource: "clicks"}, event(4))
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := g.acked("page_views") + g.acked("clicks"); got != 4 {
		t.Errorf("%d rows acknowledged; want 4", got)
	}
	if got := testutil.ToFloat64(h.f.m.upstreamRequests.WithLabelValues("ok")); got != 2 {
		t.Errorf(`tbproxy_upstream_requests_total{code="ok"}: got %v; want 2`, got)
	}
}

// TestFinalErrorIsDropped: an error that is neither retryable nor an HTTP
// refusal (the file sink's, when a datasource's file is a directory) drops
// the batch with reason upstream_rejected and tells its waiter the error,
// instead of retrying forever while the buffer fills; other datasources
// keep flowing.
func TestFinalErrorIsDropped(t *testing.T) {
	up := scriptFunc(func(c call) reply {
		if c.Datasource == "blocked" {
			return fail(errors.New("append 1 events to blocked.ndjson: is a directory"))
		}
		return ack
	})
	h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond})
	w := putWaiting(t, h.buf, buffer.Key{Datasource: "blocked"}, event(1))
	fine := putWaiting(t, h.buf, buffer.Key{Datasource: "fine"}, event(2))
	if _, _, f := waitDone(t, w); f == nil || f.Status != 502 || !strings.Contains(f.Message, "is a directory") {
		t.Errorf("waiter got failure %+v; want 502 and the write's error", f)
	}
	if s, _, f := waitDone(t, fine); s != 1 || f != nil {
		t.Errorf("the other datasource: %d rows, %+v; want delivered", s, f)
	}
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(h.f.m.dropped.WithLabelValues(reasonUpstreamRejected)); got != 1 {
		t.Errorf("dropped{reason=upstream_rejected} = %v; want 1", got)
	}
}

// TestNoAlarmWhenAllIsWell: batches upstream acknowledges whole leave no
// line at Warn or above in the log: an operator reading it at 3 a.m. sees
// nothing to act on.
func TestNoAlarmWhenAllIsWell(t *testing.T) {
	var logged logbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := newScript()
	h := startFlusherLogging(t, s, Options{FlushInterval: time.Millisecond}, "", log)
	for i := range 5 {
		h.put(t, buffer.Key{Datasource: "ds"}, event(i))
	}
	s.waitAcked(t, 5)
	if err := h.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := logged.String(); got != "" {
		t.Errorf("warnings while every batch was acknowledged:\n%s", got)
	}
}

// TestAttemptsHaveNoDeadlineOfTheirOwn: outside the drain the flusher puts
// no deadline of its own on a send (the upstream's UPSTREAM_TIMEOUT bounds
// it), so a slow but healthy upstream is never cut short; only the drain's
// deadline bounds an attempt (TestShutdownTimeoutAbandonsSendDuringDrain).
func TestAttemptsHaveNoDeadlineOfTheirOwn(t *testing.T) {
	s := newScript()
	h := startFlusher(t, s, Options{FlushInterval: time.Millisecond})
	h.put(t, buffer.Key{Datasource: "ds"}, event(0))
	s.waitAcked(t, 1)
	c := s.sends()[0]
	if !c.Deadline.IsZero() && c.Deadline.Sub(c.At) < time.Hour {
		t.Errorf("a send outside the drain had a deadline %s after it began; want none of the flusher's own", c.Deadline.Sub(c.At))
	}
}
