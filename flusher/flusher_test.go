package flusher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/upstream"
)

// harness runs a real Flusher over a buffer against an upstream.
type harness struct {
	buf    *buffer.Buffer
	f      *Flusher
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// startFlusher runs a Flusher over a fresh buffer and registry, its dead
// letters off.
func startFlusher(t *testing.T, up Sender, opts Options) *harness {
	t.Helper()
	return startFlusherWithDeadLetters(t, up, opts, "")
}

// startFlusherWithDeadLetters is startFlusher with dropped batches written
// to deadLetterDir, the writer's metrics beside the flusher's, as main
// wires them.
func startFlusherWithDeadLetters(t *testing.T, up Sender, opts Options, deadLetterDir string) *harness {
	t.Helper()
	return startFlusherLogging(t, up, opts, deadLetterDir, slog.New(slog.DiscardHandler))
}

// startFlusherLogging is startFlusherWithDeadLetters with the flusher's log
// going to log.
func startFlusherLogging(t *testing.T, up Sender, opts Options, deadLetterDir string, log *slog.Logger) *harness {
	t.Helper()
	buf := buffer.New(buffer.Options{MaxEvents: 1 << 20, MaxBytes: 1 << 28})
	reg := prometheus.NewRegistry()
	dead, err := deadletter.New(deadLetterDir, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	opts.Upstream, opts.DeadLetters = up, dead
	if opts.MinBackoff == 0 {
		opts.MinBackoff, opts.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	}
	f, err := New(buf, opts, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{buf: buf, f: f, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return")
		}
	})
	return h
}

// stop closes the buffer, ends Run and returns its error.
func (h *harness) stop(t *testing.T) error {
	t.Helper()
	h.buf.Close()
	h.cancel()
	select {
	case err := <-h.done:
		h.done <- err // for Cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
		return nil
	}
}

func (h *harness) put(t *testing.T, k buffer.Key, lines ...string) {
	t.Helper()
	b := make([][]byte, len(lines))
	for i, l := range lines {
		b[i] = []byte(l)
	}
	if err := h.buf.Put(k, b); err != nil {
		t.Fatalf("Put: %v", err)
	}
}

// counter returns the value of the counter called name on the harness's
// registry: the flusher's metrics and the dead-letter writer's.
func (h *harness) counter(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}

func event(i int) string {
	return fmt.Sprintf(`{"i":%d,"s":"Zürich 東京 🚀","big":12345678901234567890123}`, i)
}

// TestDeliversEveryEventOnce: N events in, exactly N rows acknowledged, each
// once and byte-identical, to the datasource they were sent to, in batches
// keyed by no token (proxy-token mode: the upstream sends its own). How
// Tinybird's client puts a batch on the wire (gzip, wait=true, the token) is
// upstream/tinybird's TestSendRequest; TestThroughTinybird runs both.
func TestDeliversEveryEventOnce(t *testing.T) {
	up := newScript()
	h := startFlusher(t, up, Options{FlushInterval: 20 * time.Millisecond})
	want := map[string][]string{}
	for i := range 300 {
		ds := []string{"alpha", "beta", "gamma"}[i%3]
		h.put(t, buffer.Key{Datasource: ds}, event(i), event(i+1000))
		want[ds] = append(want[ds], event(i), event(i+1000))
	}
	up.waitAcked(t, 600)
	if err := h.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for ds, lines := range want {
		if got := up.ackedLines(ds); !slices.Equal(got, lines) {
			t.Errorf("%s: got %d rows; want %d, in order and byte-identical", ds, len(got), len(lines))
		}
	}
	if n := up.acked(""); n != 600 {
		t.Errorf("got %d rows upstream; want 600", n)
	}
	for _, c := range up.sends() {
		if c.Token != "" {
			t.Errorf("a batch for %s carries token %q; want none, so the upstream sends its own", c.Datasource, c.Token)
		}
	}
	if h.buf.Len() != 0 {
		t.Errorf("buffer still holds %d events after delivery", h.buf.Len())
	}
	if got := testutil.ToFloat64(h.f.m.delivered); got != 600 {
		t.Errorf("tbproxy_delivered_events_total: got %v; want 600", got)
	}
}

func TestBatchCutByRows(t *testing.T) {
	up := newScript()
	h := startFlusher(t, up, Options{BatchRows: 10, FlushInterval: time.Hour})
	lines := make([]string, 35)
	for i := range lines {
		lines[i] = event(i)
	}
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, lines...) // one request larger than a batch
	up.waitAcked(t, 30)                                          // three full batches; the rest waits for the interval
	if err := h.stop(t); err != nil {                            // the drain sends the remainder
		t.Fatal(err)
	}
	var sizes []int
	for _, c := range up.sends() {
		sizes = append(sizes, len(c.lines()))
	}
	if !slices.Equal(sizes, []int{10, 10, 10, 5}) {
		t.Errorf("rows per upstream request: got %v; want [10 10 10 5]", sizes)
	}
}

func TestBatchCutByBytes(t *testing.T) {
	up := newScript()
	const limit = 1024
	h := startFlusher(t, up, Options{BatchBytes: limit, FlushInterval: time.Hour})
	for i := range 50 {
		h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, event(i), event(i+100))
	}
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if n := up.acked(""); n != 100 {
		t.Fatalf("got %d rows; want 100", n)
	}
	sends := up.sends()
	for _, c := range sends {
		if len(c.Data) > limit {
			t.Errorf("upstream request of %d bytes; limit %d", len(c.Data), limit)
		}
	}
	if len(sends) < 100*len(event(10))/limit {
		t.Errorf("got %d requests; want batches cut near %d bytes", len(sends), limit)
	}
}

// TestBatchCutByInterval: a batch far below BatchRows and BatchBytes is
// sent once FlushInterval passes (nothing else would send it: the loop is
// not draining). One Put, so no timing window decides the batch count.
func TestBatchCutByInterval(t *testing.T) {
	up := newScript()
	h := startFlusher(t, up, Options{FlushInterval: 50 * time.Millisecond})
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, event(1), event(2), event(3))
	up.waitAcked(t, 3)
	if n := len(up.sends()); n != 1 {
		t.Errorf("got %d upstream requests; want the 3 events in 1", n)
	}
}

// TestRetriesThrough429And500: a 429 with Retry-After and a 500 are retried
// and the rows arrive exactly once. (upstream/tinybird's TestSendAnswers
// maps Tinybird's "429, Retry-After: 1" to the RetryAfter scripted here.)
func TestRetriesThrough429And500(t *testing.T) {
	up := newScript(retryable(429, time.Second), retryable(500, 0), ackStatus(200))
	h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond})
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, event(1), event(2))
	up.waitAcked(t, 2)
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := up.statuses(); got[429] != 1 || got[500] != 1 || got[200] != 1 {
		t.Errorf("upstream statuses: got %v; want one each of 429, 500, 200", got)
	}
	// Upstream's Retry-After wins over the flusher's 5 ms backoff: the
	// retry comes no sooner than it asked (a lower bound, which a slow
	// machine cannot break).
	if sends := up.sends(); len(sends) >= 2 {
		if gap := sends[1].At.Sub(sends[0].At); gap < 900*time.Millisecond {
			t.Errorf("retried %v after a 429 with Retry-After: 1; want at least 1s", gap)
		}
	}
	if n := up.acked(""); n != 2 {
		t.Errorf("got %d rows; want 2 (no duplicates)", n)
	}
	if got := testutil.ToFloat64(h.f.m.retries); got != 2 {
		t.Errorf("tbproxy_upstream_retries_total: got %v; want 2", got)
	}
	for code, want := range map[string]float64{"429": 1, "500": 1, "200": 1} {
		if got := testutil.ToFloat64(h.f.m.upstreamRequests.WithLabelValues(code)); got != want {
			t.Errorf("tbproxy_upstream_requests_total{code=%q}: got %v; want %v", code, got, want)
		}
	}
}

// TestRejectedBatchIsDropped: a final refusal (a *upstream.StatusError, as
// Tinybird's 403, 400 and 422 map to) drops that batch with a reason and a
// metric, and other datasources keep flowing.
func TestRejectedBatchIsDropped(t *testing.T) {
	for _, tt := range []struct {
		status int
		reason string
	}{{403, reasonUpstreamRejected}, {400, reasonUpstreamRejected}, {422, reasonUpstreamPartial}} {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			up := scriptFunc(func(c call) reply {
				if c.Datasource == "bad" {
					return refused(tt.status, "refused")
				}
				return ack
			})
			h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond})
			h.put(t, buffer.Key{Token: "t", Datasource: "bad"}, event(1), event(2), event(3))
			h.put(t, buffer.Key{Token: "t", Datasource: "good"}, event(4))
			up.waitAcked(t, 1)
			if err := h.stop(t); err != nil {
				t.Fatalf("Run: %v (a dropped batch is not a shutdown loss)", err)
			}
			if got := testutil.ToFloat64(h.f.m.dropped.WithLabelValues(tt.reason)); got != 3 {
				t.Errorf("dropped{reason=%q}: got %v; want 3", tt.reason, got)
			}
			if got := up.statuses()[tt.status]; got != 1 {
				t.Errorf("%d answers: got %d; want 1 (never retried)", tt.status, got)
			}
			if h.buf.Len() != 0 {
				t.Errorf("dropped events still held: %d", h.buf.Len())
			}
		})
	}
}

// TestShortAckIsCounted: an acknowledgement that counts fewer rows than
// were sent is accounted as a drop, not silently as delivered.
func TestShortAckIsCounted(t *testing.T) {
	up := newScript(answer(upstream.Result{Status: 200, SuccessfulRows: 1, QuarantinedRows: 1}))
	h := startFlusher(t, up, Options{FlushInterval: time.Hour})
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, event(1), event(2), event(3), event(4))
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	// 4 sent, 1 written, 1 quarantined: 2 unaccounted for.
	if got := testutil.ToFloat64(h.f.m.dropped.WithLabelValues(reasonUpstreamShortAck)); got != 2 {
		t.Errorf("dropped{reason=upstream_short_ack}: got %v; want 2", got)
	}
	if got := testutil.ToFloat64(h.f.m.delivered); got != 1 {
		t.Errorf("delivered: got %v; want 1", got)
	}
}

// TestFailingDatasourceDoesNotStallOthers: with one upstream slot, a
// datasource that always fails still lets another deliver.
func TestFailingDatasourceDoesNotStallOthers(t *testing.T) {
	up := scriptFunc(func(c call) reply {
		if c.Datasource == "broken" {
			return retryable(503, 0)
		}
		return ack
	})
	h := startFlusher(t, up, Options{
		FlushInterval: 10 * time.Millisecond, Concurrency: 1, DrainTimeout: 200 * time.Millisecond,
	})
	h.put(t, buffer.Key{Token: "t", Datasource: "broken"}, event(0))
	for i := range 20 {
		h.put(t, buffer.Key{Token: "t", Datasource: "fine"}, event(i))
	}
	up.waitAcked(t, 20)
	// Only the broken datasource's event is still held, and it is still
	// being retried: the drain deadline finds exactly it.
	if err := h.stop(t); !errors.Is(err, ErrUndelivered) {
		t.Fatalf("Run: got %v; want ErrUndelivered for the broken datasource", err)
	}
	if got := testutil.ToFloat64(h.f.m.dropped.WithLabelValues(reasonShutdownTimeout)); got != 1 {
		t.Errorf("dropped{reason=shutdown_timeout}: got %v; want 1", got)
	}
	if up.acked("broken") != 0 || up.statuses()[503] < 2 {
		t.Errorf("broken datasource: %d rows, %d 503s; want 0 rows and retries", up.acked("broken"), up.statuses()[503])
	}
}

// TestPassThroughTokensNeverMix: batches are keyed by (token, datasource).
func TestPassThroughTokensNeverMix(t *testing.T) {
	up := newScript()
	h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond})
	for i := range 10 {
		h.put(t, buffer.Key{Token: "workspace-a", Datasource: "ds"}, fmt.Sprintf(`{"ws":"a","i":%d}`, i))
		h.put(t, buffer.Key{Token: "workspace-b", Datasource: "ds"}, fmt.Sprintf(`{"ws":"b","i":%d}`, i))
	}
	up.waitAcked(t, 20)
	for _, c := range up.sends() {
		want := `{"ws":"` + strings.TrimPrefix(c.Token, "workspace-") + `"`
		for _, l := range c.lines() {
			if !strings.HasPrefix(l, want) {
				t.Errorf("row %s arrived with token %q", l, c.Token)
			}
		}
	}
}

// TestDrainDeliversEverything: ending Run sends every held batch at once.
func TestDrainDeliversEverything(t *testing.T) {
	up := newScript()
	h := startFlusher(t, up, Options{FlushInterval: time.Hour})
	for i := range 100 {
		h.put(t, buffer.Key{Token: "t", Datasource: fmt.Sprintf("ds%d", i%7)}, event(i))
	}
	if err := h.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := up.acked(""); n != 100 {
		t.Errorf("got %d rows after drain; want 100", n)
	}
}

// failing answers every Send with a retryable 500.
func failing() *script {
	return scriptFunc(func(call) reply { return retryable(500, 0) })
}

// TestShutdownTimeoutCountsLoss: what cannot be delivered by the drain
// deadline is counted, logged and reported by Run.
func TestShutdownTimeoutCountsLoss(t *testing.T) {
	h := startFlusher(t, failing(), Options{FlushInterval: time.Millisecond, DrainTimeout: 200 * time.Millisecond})
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, event(1), event(2), event(3))
	h.put(t, buffer.Key{Token: "t", Datasource: "other"}, event(4))
	err := h.stop(t)
	if !errors.Is(err, ErrUndelivered) {
		t.Fatalf("Run: got %v; want ErrUndelivered", err)
	}
	if got := testutil.ToFloat64(h.f.m.dropped.WithLabelValues(reasonShutdownTimeout)); got != 4 {
		t.Errorf("dropped{reason=shutdown_timeout}: got %v; want 4", got)
	}
}

// TestShutdownTimeoutAbandonsSendDuringDrain: an upload started during the
// drain is given no more than the drain's deadline, however slow upstream is.
func TestShutdownTimeoutAbandonsSendDuringDrain(t *testing.T) {
	up := gated() // never let through: each Send ends only with its ctx
	// FlushInterval 1h: the batch is first sent by the drain.
	const drain = 300 * time.Millisecond
	h := startFlusher(t, up, Options{FlushInterval: time.Hour, DrainTimeout: drain})
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, event(1))
	start := time.Now()
	if err := h.stop(t); !errors.Is(err, ErrUndelivered) {
		t.Fatalf("Run: got %v; want ErrUndelivered", err)
	}
	// The send is given the drain's deadline (the drain began before the
	// send did), not the day an attempt gets otherwise, so Run returns soon
	// after that deadline however long the upstream would have taken.
	sends := up.sends()
	if len(sends) == 0 {
		t.Fatal("the drain sent nothing")
	}
	for _, c := range sends {
		if c.Deadline.IsZero() || c.Deadline.After(c.At.Add(drain)) {
			t.Errorf("a send at %s was given deadline %s; want the drain's, by %s",
				c.At.Format(time.StampMicro), c.Deadline.Format(time.StampMicro), c.At.Add(drain).Format(time.StampMicro))
		}
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("shutdown took %s with a 300ms drain timeout", took)
	}
}
