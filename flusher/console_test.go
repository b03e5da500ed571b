package flusher

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/poll"
	"github.com/tbproxy/tbproxy/upstream"
)

// streamOf returns the stats of ds's stream, or zero stats if it has none
// yet.
func streamOf(t *testing.T, f *Flusher, ds string) StreamStats {
	t.Helper()
	for _, s := range f.Streams() {
		if s.Datasource == ds {
			return s
		}
	}
	return StreamStats{}
}

// TestPauseHoldsOneDatasource: a paused datasource's events stay held while
// another's are delivered; resumed, they are delivered, each once.
func TestPauseHoldsOneDatasource(t *testing.T) {
	up := newScript()
	h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond})
	if !h.f.Pause("held") || h.f.Pause("held") {
		t.Fatal("Pause: want true the first time, false when already paused")
	}
	if st := streamOf(t, h.f, "held"); !st.Paused {
		t.Fatal("a paused datasource with no events yet is not listed as paused")
	}
	h.put(t, buffer.Key{Datasource: "held"}, event(1))
	h.put(t, buffer.Key{Datasource: "flows"}, event(2))
	up.until(t, "flows delivered", func(calls []call) bool { return len(calls) == 1 && calls[0].acked() })
	if st := streamOf(t, h.f, "held"); !st.Paused || st.HeldEvents != 1 || st.Delivered != 0 || st.Oldest.IsZero() {
		t.Fatalf("paused stream: %+v; want paused, 1 held with its age, none delivered", st)
	}
	for _, c := range up.sends() {
		if c.Datasource == "held" {
			t.Fatal("a paused datasource's batch was sent")
		}
	}
	if !h.f.Resume("held") {
		t.Fatal("Resume: want true for a paused datasource")
	}
	up.until(t, "held delivered after Resume", func(calls []call) bool { return len(calls) == 2 && calls[1].acked() })
	poll.Until(t, "held's stats to show the delivery", func() bool {
		st := streamOf(t, h.f, "held")
		return !st.Paused && st.Delivered == 1 && st.HeldEvents == 0 && !st.LastDelivery.IsZero()
	})
}

// TestFlushSendsBeforeTheInterval: with a long interval, Flush sends a
// datasource's open batch now, and only that datasource's; Flush("") sends
// every one.
func TestFlushSendsBeforeTheInterval(t *testing.T) {
	up := newScript()
	h := startFlusher(t, up, Options{FlushInterval: time.Hour})
	h.put(t, buffer.Key{Datasource: "a"}, event(1))
	h.put(t, buffer.Key{Datasource: "b"}, event(2))
	poll.Until(t, "both taken", func() bool { return len(h.f.Streams()) == 2 })
	h.f.Flush("a")
	up.until(t, "a sent", func(calls []call) bool { return len(calls) == 1 && calls[0].Datasource == "a" })
	h.f.Flush("")
	up.until(t, "b sent", func(calls []call) bool { return len(calls) == 2 && calls[1].Datasource == "b" })
}

// TestDrainResumesPaused: a shutdown delivers a paused datasource's events
// rather than lose them.
func TestDrainResumesPaused(t *testing.T) {
	up := newScript()
	h := startFlusher(t, up, Options{FlushInterval: 10 * time.Millisecond})
	h.f.Pause("p")
	h.put(t, buffer.Key{Datasource: "p"}, event(1))
	poll.Until(t, "taken", func() bool { return streamOf(t, h.f, "p").HeldEvents == 1 })
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if calls := up.sends(); len(calls) != 1 || !calls[0].acked() {
		t.Errorf("drain sent %d batches; want the paused datasource's one", len(calls))
	}
}

// TestStreamStatsTellWhatHappened: the stats say what an operator needs:
// accepted, delivered, quarantined, dropped and dead-lettered counts, the
// last status and a client-safe error text, and a token id that is not the
// token.
func TestStreamStatsTellWhatHappened(t *testing.T) {
	up := newScript(
		retryable(503, 0),
		answer(upstream.Result{Status: 202, SuccessfulRows: 1, QuarantinedRows: 1}),
		refused(400, "bad schema"),
	)
	h := startFlusherWithDeadLetters(t, up, Options{FlushInterval: 5 * time.Millisecond}, t.TempDir())
	key := buffer.Key{Token: "p.secret-token-value", Datasource: "ds"}
	h.put(t, key, event(1), event(2))
	poll.Until(t, "the first batch delivered and released", func() bool {
		st := streamOf(t, h.f, "ds")
		return st.Delivered == 1 && st.InFlight == 0
	})
	st := streamOf(t, h.f, "ds")
	if st.Accepted != 2 || st.Quarantined != 1 || st.LastStatus != 202 || st.LastError != "" {
		t.Errorf("after a retry and a delivery: %+v", st)
	}
	if st.TokenID == "" || len(st.TokenID) != 8 || strings.Contains(key.Token, st.TokenID) {
		t.Errorf("token id %q; want 8 hex digits that are not part of the token", st.TokenID)
	}
	h.put(t, key, event(3))
	poll.Until(t, "the second batch dropped and released", func() bool {
		st := streamOf(t, h.f, "ds")
		return st.Dropped == 1 && st.InFlight == 0
	})
	st = streamOf(t, h.f, "ds")
	if st.LastStatus != 400 || !strings.Contains(st.LastError, "bad schema") || st.DeadLettered != 1 || st.HeldEvents != 0 {
		t.Errorf("after a drop: %+v; want status 400, its error, 1 dead-lettered, nothing held", st)
	}
}

// TestRetryErrorTextHidesRows: a retried failure's text may quote rows
// (ClickHouse); the stats show a generic text, or what clients are told.
func TestRetryErrorTextHidesRows(t *testing.T) {
	gate := make(chan struct{})
	up := newScript(fail(&upstream.RetryableError{Status: 500, Err: errors.New(`row {"secret":1} broke`)}),
		func(ctx context.Context, b *upstream.Batch) (upstream.Result, error) {
			<-gate
			return upstream.Result{SuccessfulRows: b.Rows}, nil
		})
	h := startFlusher(t, up, Options{FlushInterval: 5 * time.Millisecond})
	defer close(gate)
	h.put(t, buffer.Key{Datasource: "ds"}, `{"secret":1}`)
	poll.Until(t, "the failure recorded", func() bool { return streamOf(t, h.f, "ds").LastStatus == 500 })
	if st := streamOf(t, h.f, "ds"); strings.Contains(st.LastError, "secret") || !strings.Contains(st.LastError, "500") {
		t.Errorf("last error %q; want the status, not the rows", st.LastError)
	}
}

// TestLedgerIsBounded: the stats kept per stream are bounded: past
// MaxStreams, new streams are summed as "(other)", and streams that hold
// nothing and were idle for 15 minutes are forgotten to make room.
func TestLedgerIsBounded(t *testing.T) {
	l := newLedger(2, newDSMetrics())
	now := time.Now()
	put := func(ds string, at time.Time) {
		l.taken([]buffer.Entry{{Key: buffer.Key{Datasource: ds}, Data: []byte("{}\n"), Rows: 1}}, at)
		l.finished(buffer.Key{Datasource: ds}, 1, [][]byte{[]byte("{}\n")}, at)
	}
	put("a", now)
	put("b", now)
	put("c", now)
	names := func() (out []string) {
		for _, s := range l.snapshot() {
			out = append(out, s.Datasource)
		}
		return out
	}
	if got := strings.Join(names(), ","); got != "(other),a,b" {
		t.Fatalf("streams %s; want a, b and the overflow", got)
	}
	put("d", now.Add(ledgerRetention+time.Minute))
	if got := strings.Join(names(), ","); got != "d" {
		t.Errorf("after 16 idle minutes: streams %s; want only the new one", got)
	}
}
