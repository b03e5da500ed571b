package flusher

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/upstream"
)

// tooLarge refuses with 413 (a *upstream.StatusError, as Tinybird's 413
// maps to) every batch of more than limit NDJSON bytes, and acks the rest.
func tooLarge(limit int) *script {
	return scriptFunc(func(c call) reply {
		if len(c.Data) > limit {
			return refused(413, fmt.Sprintf("body of %d bytes exceeds the limit of %d bytes", len(c.Data), limit))
		}
		return ack
	})
}

// Test413SplitsBatches: upstream refuses bodies above a size with 413; the
// flusher halves batches until they fit, and every row arrives once. A row
// larger than the limit on its own is dead-lettered with its reason.
func Test413SplitsBatches(t *testing.T) {
	const limit = 2048
	up := tooLarge(limit)
	dir := t.TempDir()
	h := startFlusherWithDeadLetters(t, up, Options{FlushInterval: time.Hour}, dir)
	var want []string
	for i := range 100 {
		want = append(want, event(i))
	}
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, want[:60]...)
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, want[60:]...)
	huge := `{"huge":"` + strings.Repeat("x", 3*limit) + `"}`
	h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, huge)
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	got := up.ackedLines("")
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("got %d rows upstream; want the 100 small ones exactly once", len(got))
	}
	if up.statuses()[413] == 0 || testutil.ToFloat64(h.f.m.splits) == 0 {
		t.Errorf("no 413 or no split seen: statuses %v", up.statuses())
	}
	if got := testutil.ToFloat64(h.f.m.dropped.WithLabelValues(reasonRowTooLarge)); got != 1 {
		t.Errorf("dropped{reason=row_too_large}: got %v; want 1", got)
	}
	dead, err := os.ReadFile(filepath.Join(dir, "ds.ndjson"))
	if err != nil || string(dead) != huge+"\n" {
		t.Errorf("dead letter: got %d bytes (err %v); want the huge row", len(dead), err)
	}
}

// TestDeadLetterFile: a refused batch is appended to <dir>/<ds>.ndjson, and
// <dir>/<ds>.errors.jsonl says when, why, and where its rows are. (A 400
// with {"error":"column x is missing"} is the refusal scripted here; see
// upstream/tinybird's TestSendAnswers.)
func TestDeadLetterFile(t *testing.T) {
	up := scriptFunc(func(c call) reply {
		if c.Datasource == "bad" {
			return refused(400, "column x is missing")
		}
		return ack
	})
	dir := t.TempDir()
	h := startFlusherWithDeadLetters(t, up, Options{FlushInterval: time.Hour}, dir)
	h.put(t, buffer.Key{Token: "secret-client-token", Datasource: "bad"}, event(1), event(2))
	h.put(t, buffer.Key{Token: "t", Datasource: "good"}, event(3))
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	rows, err := os.ReadFile(filepath.Join(dir, "bad.ndjson"))
	if err != nil || string(rows) != event(1)+"\n"+event(2)+"\n" {
		t.Fatalf("bad.ndjson: got %q (err %v)", rows, err)
	}
	meta, err := os.ReadFile(filepath.Join(dir, "bad.errors.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var rec deadletter.Record
	sc := bufio.NewScanner(bytes.NewReader(meta))
	n := 0
	for sc.Scan() {
		n++
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
	}
	if n != 1 || rec.Datasource != "bad" || rec.Reason != reasonUpstreamRejected || rec.Status != 400 ||
		rec.Error != "column x is missing" || rec.Rows != 2 || rec.Bytes != len(rows) || rec.Offset != 0 || rec.File != "bad.ndjson" {
		t.Errorf("got %d records, last %+v", n, rec)
	}
	if strings.Contains(string(meta)+string(rows), "secret-client-token") {
		t.Errorf("a dead letter contains the client's token")
	}
	if _, err := os.Stat(filepath.Join(dir, "good.ndjson")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a delivered datasource has a dead-letter file (err %v)", err)
	}
	if got := h.counter(t, "tbproxy_dead_lettered_events_total"); got != 2 {
		t.Errorf("tbproxy_dead_lettered_events_total: got %v; want 2", got)
	}
}

// TestRateLimitHold: after an answer that says the datasource's window is
// spent (Result.HoldFor: upstream/tinybird's TestSendAnswers maps
// X-RateLimit-Remaining: 0 to it, until X-RateLimit-Reset), the
// datasource's next batch waits out the hold instead of earning a 429.
func TestRateLimitHold(t *testing.T) {
	const hold = time.Second // one request per second per datasource
	var (
		mu    sync.Mutex
		until time.Time // the window is spent until then
	)
	up := scriptFunc(func(c call) reply {
		mu.Lock()
		defer mu.Unlock()
		if c.At.Before(until) {
			return retryable(429, until.Sub(c.At))
		}
		until = time.Now().Add(hold)
		return answer(upstream.Result{Status: 200, SuccessfulRows: c.Rows, HoldFor: hold})
	})
	h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond})
	for i := range 3 {
		h.put(t, buffer.Key{Token: "t", Datasource: "ds"}, event(i))
		up.waitAcked(t, i+1)
	}
	if got := up.statuses()[429]; got != 0 {
		t.Errorf("earned %d 429s; the proxy should have waited for the reset", got)
	}
}

// TestTokenDeniedAfter403: in pass-through mode a token upstream refused is
// refused by the buffer for that datasource for TokenDenyTTL; other tokens,
// and the same token for other datasources, are not affected.
func TestTokenDeniedAfter403(t *testing.T) {
	up := scriptFunc(func(c call) reply {
		if c.Token != "good-token" {
			return refused(403, "invalid token")
		}
		return ack
	})
	h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond, TokenDenyTTL: time.Hour})
	w := buffer.NewWaiter()
	if err := h.buf.PutWaiting(buffer.Key{Token: "bad-token", Datasource: "ds"}, [][]byte{[]byte(event(1))}, w); err != nil {
		t.Fatal(err)
	}
	h.put(t, buffer.Key{Token: "good-token", Datasource: "ds"}, event(2))
	select { // the token is denied before waiting clients are told
	case <-w.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the bad token's batch never finished")
	}
	if _, _, f := w.Result(); f == nil || f.Status != 403 {
		t.Errorf("waiting client: got failure %+v; want upstream's 403", f)
	}
	if err := h.buf.Put(buffer.Key{Token: "bad-token", Datasource: "ds"}, [][]byte{[]byte(event(3))}); !errors.Is(err, buffer.ErrDenied) {
		t.Errorf("Put with a refused token: got %v; want ErrDenied", err)
	}
	if err := h.buf.Put(buffer.Key{Token: "good-token", Datasource: "ds"}, [][]byte{[]byte(event(4))}); err != nil {
		t.Errorf("Put with a good token: %v", err)
	}
	if err := h.buf.Put(buffer.Key{Token: "bad-token", Datasource: "other"}, [][]byte{[]byte(event(5))}); err != nil {
		t.Errorf("Put with the refused token for another datasource: %v", err)
	}
}

func putWaiting(t *testing.T, buf *buffer.Buffer, k buffer.Key, lines ...string) *buffer.Waiter {
	t.Helper()
	w := buffer.NewWaiter()
	ls := make([][]byte, len(lines))
	for i, l := range lines {
		ls[i] = []byte(l)
	}
	if err := buf.PutWaiting(k, ls, w); err != nil {
		t.Fatal(err)
	}
	return w
}

func waitDone(t *testing.T, w *buffer.Waiter) (successful, quarantined int, f *buffer.Failure) {
	t.Helper()
	select {
	case <-w.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("a waiting request was never told its outcome")
	}
	return w.Result()
}

// TestWaitersThrough413: requests whose rows are split across several
// upstream requests after 413s are each told their own full row count.
func TestWaitersThrough413(t *testing.T) {
	up := tooLarge(3 * (len(event(10)) + 1))
	// The 21 rows fill one batch of BatchRows, sent when full, so it is
	// refused whatever the machine's speed: no interval cuts it first.
	h := startFlusher(t, up, Options{BatchRows: 21, FlushInterval: time.Hour})
	var ws []*buffer.Waiter
	for i := range 7 {
		ws = append(ws, putWaiting(t, h.buf, buffer.Key{Token: "t", Datasource: "ds"}, event(10*i), event(10*i+1), event(10*i+2)))
	}
	for i, w := range ws {
		if s, q, f := waitDone(t, w); s != 3 || q != 0 || f != nil {
			t.Errorf("request %d: told %d successful, %d quarantined, failure %+v; want 3, 0, none", i, s, q, f)
		}
	}
	if up.acked("") != 21 || up.statuses()[413] == 0 {
		t.Errorf("upstream: %d rows, statuses %v; want 21 rows after some 413s", up.acked(""), up.statuses())
	}
}

// TestShutdownTimeoutTellsWaitersAndDeadLetters: at a shutdown timeout every
// waiting client is told (503), and every held row is dead-lettered once.
func TestShutdownTimeoutTellsWaitersAndDeadLetters(t *testing.T) {
	dir := t.TempDir()
	h := startFlusherWithDeadLetters(t, failing(), Options{
		FlushInterval: time.Hour, BatchRows: 2, DrainTimeout: 300 * time.Millisecond, Concurrency: 1,
	}, dir)
	var ws []*buffer.Waiter
	var want []string
	for i := range 10 {
		l := []string{event(3 * i), event(3*i + 1), event(3*i + 2)}
		want = append(want, l...)
		ws = append(ws, putWaiting(t, h.buf, buffer.Key{Token: "t", Datasource: fmt.Sprintf("ds%d", i%3)}, l...))
	}
	if err := h.stop(t); !errors.Is(err, ErrUndelivered) {
		t.Fatalf("Run: got %v; want ErrUndelivered", err)
	}
	// Batches whose upload was started (and failed, or was cut off) may
	// have been written; the rest were never sent. Each is told which.
	told := map[string]int{}
	for i, w := range ws {
		_, _, f := waitDone(t, w)
		if f == nil || f.Status != 503 || f.Reason != reasonShutdownTimeout || f.Retained {
			t.Fatalf("request %d: failure %+v; want 503 shutdown_timeout", i, f)
		}
		switch {
		case strings.HasSuffix(f.Message, "they were not written"):
			told["not written"]++
		case strings.HasSuffix(f.Message, "so they may have been written"):
			told["may have been written"]++
		default:
			t.Errorf("request %d: told %q", i, f.Message)
		}
	}
	if told["not written"] == 0 || told["may have been written"] == 0 {
		t.Errorf("requests were told %v; want both: one upload slot, so some batches were never sent", told)
	}
	var meta string
	for i := range 3 {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("ds%d.errors.jsonl", i)))
		meta += string(b)
	}
	if !strings.Contains(meta, "may have been written") || !strings.Contains(meta, "they were not written") {
		t.Errorf("dead-letter records do not tell sent from unsent batches:\n%s", meta)
	}
	var dead []string
	for i := range 3 {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("ds%d.ndjson", i)))
		for l := range strings.Lines(string(b)) {
			dead = append(dead, strings.TrimSuffix(l, "\n"))
		}
	}
	slices.Sort(dead)
	slices.Sort(want)
	if !slices.Equal(dead, want) {
		t.Errorf("dead letters: got %d rows; want each of the %d held rows once", len(dead), len(want))
	}
	if got := testutil.ToFloat64(h.f.m.dropped.WithLabelValues(reasonShutdownTimeout)); got != 30 {
		t.Errorf("dropped{reason=shutdown_timeout}: got %v; want 30", got)
	}
}

// TestQuarantineShared: when upstream quarantines rows of a batch that
// carries several waiting requests, the requests' counts add up to
// upstream's and each request's counts add up to its rows.
func TestQuarantineShared(t *testing.T) {
	up := newScript(answer(upstream.Result{Status: 200, SuccessfulRows: 2, QuarantinedRows: 1}))
	// No interval passes: the three requests' rows fill one batch of
	// BatchRows, sent when full, whatever the machine's speed. (A drain
	// could seal a batch holding only some of them.)
	h := startFlusher(t, up, Options{BatchRows: 3, FlushInterval: time.Hour})
	ws := []*buffer.Waiter{
		putWaiting(t, h.buf, buffer.Key{Token: "t", Datasource: "ds"}, event(1)),
		putWaiting(t, h.buf, buffer.Key{Token: "t", Datasource: "ds"}, event(2)),
		putWaiting(t, h.buf, buffer.Key{Token: "t", Datasource: "ds"}, event(3)),
	}
	totalS, totalQ := 0, 0
	for i, w := range ws {
		s, q, f := waitDone(t, w)
		if f != nil || s+q != 1 {
			t.Errorf("request %d: told %d+%d (failure %+v); want its 1 row accounted for", i, s, q, f)
		}
		totalS, totalQ = totalS+s, totalQ+q
	}
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if n := len(up.sends()); n != 1 {
		t.Fatalf("%d upstream requests; the three rows were meant to share one batch", n)
	}
	if totalS != 2 || totalQ != 1 {
		t.Errorf("requests were told %d successful and %d quarantined; upstream said 2 and 1", totalS, totalQ)
	}
}

// TestShutdownTimeoutRetainedTellsTheTruth: with a durable store keeping
// what the drain could not deliver, a waiting client is told its rows are
// kept and will be delivered, not that they were not written (a client
// that believed it would retry and duplicate them).
func TestShutdownTimeoutRetainedTellsTheTruth(t *testing.T) {
	h := startFlusher(t, failing(), Options{FlushInterval: time.Hour, DrainTimeout: 200 * time.Millisecond, RetainOnShutdown: true})
	w := putWaiting(t, h.buf, buffer.Key{Datasource: "ds"}, event(1))
	if err := h.stop(t); err != nil {
		t.Fatalf("Run: %v; want nil, the rows are retained", err)
	}
	_, _, f := waitDone(t, w)
	if f == nil || !f.Retained || f.Status != 503 || !strings.Contains(f.Message, "they are kept and will be delivered") {
		t.Errorf("told %+v; want 503, retained, saying the rows will be delivered", f)
	}
}

// TestBoundedRetriesDrop: a failure that bounds its attempts (an unknown
// ClickHouse code) drops the batch after them, tells its waiter and frees
// the datasource for the next batch, instead of retrying forever; the
// waiter is told the public message, the dead letter the whole error.
func TestBoundedRetriesDrop(t *testing.T) {
	var calls atomic.Int32
	up := scriptFunc(func(c call) reply {
		if strings.Contains(c.Data, "poison") {
			// An outage first (retried without bound), then the bounded kind.
			if calls.Add(1) <= 4 {
				return fail(&upstream.RetryableError{Err: errors.New("connection refused")})
			}
			return fail(&upstream.RetryableError{Status: 500, MaxAttempts: 3, Public: "ClickHouse answered 500 (code 9999)",
				Err: errors.New("code 9999: cannot handle row before: secret@example.com")})
		}
		return ack
	})
	dir := t.TempDir()
	h := startFlusherWithDeadLetters(t, up, Options{FlushInterval: 10 * time.Millisecond}, dir)
	w := putWaiting(t, h.buf, buffer.Key{Datasource: "ds"}, `{"poison":1}`)
	_, _, f := waitDone(t, w)
	if f == nil || f.Status != 500 || strings.Contains(f.Message, "secret@example.com") || !strings.Contains(f.Message, "after 3 attempts") {
		t.Fatalf("waiter told %+v; want 500 after 3 attempts, without the row", f)
	}
	if n := calls.Load(); n != 4+3 {
		t.Errorf("%d attempts; want 4 during the outage, then 3 of the bounded kind", n)
	}
	next := putWaiting(t, h.buf, buffer.Key{Datasource: "ds"}, `{"fine":1}`)
	if s, _, f := waitDone(t, next); f != nil || s != 1 {
		t.Errorf("the datasource's next batch: %d rows, %+v; want delivered", s, f)
	}
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	meta, _ := os.ReadFile(filepath.Join(dir, "ds.errors.jsonl"))
	if !strings.Contains(string(meta), "secret@example.com") || !strings.Contains(string(meta), `"reason":"upstream_rejected"`) {
		t.Errorf("dead letter record %s; want the whole error and reason upstream_rejected", meta)
	}
}

// TestBackoffBetweenAttempts: without a Retry-After, retries of a failing
// batch wait the flusher's own backoff, growing from attempt to attempt
// (lower bounds only: a slow machine can make waits longer, never shorter).
func TestBackoffBetweenAttempts(t *testing.T) {
	up := newScript(retryable(500, 0), retryable(500, 0), retryable(500, 0))
	h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	h.put(t, buffer.Key{Datasource: "ds"}, event(1))
	up.waitAcked(t, 1)
	reqs := up.sends()
	if len(reqs) != 4 {
		t.Fatalf("%d requests; want 3 failures and the success", len(reqs))
	}
	for i, least := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond} {
		if gap := reqs[i+1].At.Sub(reqs[i].At); gap < least {
			t.Errorf("retry %d came %s after the failure; want at least %s", i+1, gap, least)
		}
	}
}
