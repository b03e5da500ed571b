package deadletter_test

// Tests of tbproxy replay's side of the package, through a real buffer and
// flusher with a scripted sender (deadletter_test, not deadletter: flusher
// imports deadletter).

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/upstream"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// rows returns n NDJSON rows {"i":0} to {"i":n-1}.
func rows(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(`{"i":` + strconv.Itoa(i) + "}\n")
	}
	return b.String()
}

func TestCheckFile(t *testing.T) {
	t.Parallel()
	f := func(content string, maxLine, wantRows int, wantErr string) {
		t.Helper()
		got, err := deadletter.CheckFile(writeFile(t, content), maxLine)
		switch {
		case wantErr == "" && err != nil:
			t.Errorf("CheckFile(%q): %v; want %d rows", content, err, wantRows)
		case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
			t.Errorf("CheckFile(%q): got %d, %v; want an error containing %q", content, got, err, wantErr)
		case wantErr == "" && got != wantRows:
			t.Errorf("CheckFile(%q): got %d rows; want %d", content, got, wantRows)
		}
	}
	f("", 100, 0, "")
	f("\n  \n", 100, 0, "")
	f(`{"a":1}`+"\n\n"+`  {"a":2}  `+"\r\n"+`{"a":3}`, 100, 3, "")
	f(`{"a":1}`+"\n"+`[1]`+"\n", 100, 0, "line 2 is not a JSON object")
	f("\n"+`{"a":"`+strings.Repeat("x", 100)+`"}`+"\n", 100, 0, "line 2 is longer than MAX_BODY_BYTES (100 bytes)")
	f(`{"a":"`+strings.Repeat("x", 92)+`"}`+"\n", 100, 1, "")         // exactly MAX_BODY_BYTES
	f(`{"a":"`+strings.Repeat("x", 99_992)+`"}`+"\n", 100_000, 1, "") // the same past the scanner's first 64 KiB
	f(`{"a":"`+strings.Repeat("x", 93)+`"}`+"\n", 100, 0, "line 1 is longer than MAX_BODY_BYTES (100 bytes)")
	f(rows(3)+`{"a":"`+strings.Repeat("x", 70_000)+`"}`, 100_000, 4, "")
	f(rows(3)+`{"a":"`+strings.Repeat("x", 70_000)+`"}`, 65_536, 0, "line 4 is longer than MAX_BODY_BYTES (65536 bytes)")
	absent := writeFile(t, "")
	os.Remove(absent)
	if _, err := deadletter.CheckFile(absent, 100); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CheckFile of a missing file: %v; want ErrNotExist", err)
	}
}

// scripted acknowledges every row of datasource "ok" (one as quarantined),
// one row fewer than sent of "short", and refuses "refused" for good.
type scripted struct {
	rows, batches atomic.Int64 // received
}

func (s *scripted) Send(_ context.Context, b *upstream.Batch) (upstream.Result, error) {
	s.rows.Add(int64(b.Rows))
	s.batches.Add(1)
	switch b.Key.Datasource {
	case "refused":
		return upstream.Result{}, &upstream.StatusError{Status: 400, Message: "no"}
	case "short":
		return upstream.Result{Status: 200, SuccessfulRows: b.Rows - 1}, nil
	}
	return upstream.Result{Status: 200, SuccessfulRows: b.Rows - 1, QuarantinedRows: 1}, nil
}

// TestFeed: every row of the file goes through a buffer smaller than the
// file (Feed waits for room) to the flusher, in batches that cut Feed's
// entries into pieces, and the Replay's outcome says what upstream did with
// them, quarantined rows counting as delivered.
func TestFeed(t *testing.T) {
	t.Parallel()
	const n = 2500
	file := writeFile(t, rows(n))
	for _, ds := range []string{"ok", "refused", "short"} {
		t.Run(ds, func(t *testing.T) {
			t.Parallel()
			buf := buffer.New(buffer.Options{MaxEvents: 1500, MaxBytes: 1 << 20})
			up := new(scripted)
			fl, err := flusher.New(buf, flusher.Options{Upstream: up, BatchRows: 300, FlushInterval: 10 * time.Millisecond},
				prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			flushCtx, stopFlusher := context.WithCancel(ctx)
			flushed := make(chan error, 1)
			go func() { flushed <- fl.Run(flushCtx) }()

			sent, err := deadletter.Feed(ctx, buf, buffer.Key{Datasource: ds}, file, 100)
			if err != nil {
				t.Fatalf("Feed: %v", err)
			}
			buf.Close()
			stopFlusher()
			if err := sent.Wait(ctx); err != nil {
				t.Fatalf("Wait: %v", err)
			}
			if err := <-flushed; err != nil {
				t.Fatalf("flusher: %v", err)
			}
			want := deadletter.ReplayOutcome{Rows: n, Delivered: n}
			switch batches := int(up.batches.Load()); ds {
			case "refused":
				want.Delivered, want.Dropped = 0, n
			case "short": // one row short in each batch
				want.Delivered, want.Dropped = n-batches, batches
			}
			if got := sent.Outcome(); got != want {
				t.Errorf("got %+v; want %+v", got, want)
			}
			if got := up.rows.Load(); got != n {
				t.Errorf("upstream got %d rows; want %d", got, n)
			}
		})
	}
}

// TestFeedInterrupted: with no room and none coming, Feed stops when its
// context ends, and the Replay counts only the rows it put, whose outcome
// Wait does not wait for past its own context.
func TestFeedInterrupted(t *testing.T) {
	t.Parallel()
	buf := buffer.New(buffer.Options{MaxEvents: 1500, MaxBytes: 1 << 20}) // no consumer
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	sent, err := deadletter.Feed(ctx, buf, buffer.Key{Datasource: "ds"}, writeFile(t, rows(2500)), 100)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Feed: %v; want the context's error", err)
	}
	if err := sent.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait: %v; want the context's error", err)
	}
	if got, want := sent.Outcome(), (deadletter.ReplayOutcome{Rows: 1000}); got != want {
		t.Errorf("got %+v; want %+v", got, want)
	}
}

// TestFeedWholeEntries: a file of a whole number of Feed's entries (here
// none, and exactly one) leaves nothing to wait for after the last: Wait
// returns once the rows are delivered, not at its context's end.
func TestFeedWholeEntries(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1000} {
		buf := buffer.New(buffer.Options{MaxEvents: 5000, MaxBytes: 1 << 20})
		sent, err := deadletter.Feed(context.Background(), buf, buffer.Key{Datasource: "ds"}, writeFile(t, rows(n)), 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range buf.Take(nil) { // the flusher's part: delivered
			e.Waiter.AddPart()
			e.Waiter.Finish(e.Rows, 0, nil)
			buf.Release(e.Key, e.Rows, e.Data)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := sent.Wait(ctx); err != nil {
			t.Errorf("%d rows: Wait: %v; want nil once they are delivered", n, err)
		}
		cancel()
		if got, want := sent.Outcome(), (deadletter.ReplayOutcome{Rows: n, Delivered: n}); got != want {
			t.Errorf("%d rows: got %+v; want %+v", n, got, want)
		}
	}
}
