package flusher

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/upstream"
)

func TestPolicy(t *testing.T) {
	p := policy{rows: 3, bytes: 100, interval: time.Second}
	t0 := time.Unix(1000, 0)
	for _, tt := range []struct {
		name       string
		rows, size int
		full       bool
	}{
		{"empty", 0, 0, false},
		{"below both", 2, 99, false},
		{"rows reached", 3, 10, true},
		{"bytes reached", 1, 100, true},
	} {
		if got := p.full(&batch{Batch: upstream.Batch{Rows: tt.rows, Bytes: tt.size}}); got != tt.full {
			t.Errorf("%s: full = %v; want %v", tt.name, got, tt.full)
		}
	}
	if p.due(t0, t0.Add(999*time.Millisecond)) || !p.due(t0, t0.Add(time.Second)) {
		t.Errorf("due must turn true exactly one interval after opening")
	}
}

func TestCutLines(t *testing.T) {
	f := func(data string, maxRows, maxBytes, wantN, wantRows int) {
		t.Helper()
		n, rows := cutLines([]byte(data), maxRows, maxBytes)
		if n != wantN || rows != wantRows {
			t.Errorf("cutLines(%q, %d, %d) = %d, %d; want %d, %d", data, maxRows, maxBytes, n, rows, wantN, wantRows)
		}
	}
	f("a\nbb\nccc\n", 10, 100, 9, 3)
	f("a\nbb\nccc\n", 2, 100, 5, 2)
	f("a\nbb\nccc\n", 10, 5, 5, 2)
	f("a\nbb\nccc\n", 10, 4, 2, 1)
	f("a\nbb\nccc\n", 10, 1, 0, 0)
	f("a\nbb\nccc\n", 0, 100, 0, 0)
}

// TestStreamAdd checks that entries are cut into batches at line boundaries
// and that nothing is lost or reordered.
func TestStreamAdd(t *testing.T) {
	p := policy{rows: 4, bytes: 20, interval: time.Hour}
	s := &stream{key: buffer.Key{Datasource: "ds"}}
	now := time.Now()
	entry := func(lines ...string) buffer.Entry {
		return buffer.Entry{Data: []byte(strings.Join(lines, "\n") + "\n"), Rows: len(lines), Accepted: 1}
	}
	s.add(entry("{}", "{}", "{}"), p, now)                               // 9 bytes, 3 rows
	s.add(entry("{}", "{}", "{}"), p, now)                               // fills rows to 4, then 2 more
	s.add(entry(`{"long":"`+strings.Repeat("x", 30)+`"}`, "{}"), p, now) // a line larger than a whole batch, then one that is not
	s.add(entry("{}"), p, now)
	s.seal()
	var got []string
	for _, b := range s.ready {
		var one bytes.Buffer
		if _, err := b.WriteTo(&one); err != nil {
			t.Fatal(err)
		}
		if b.Rows != strings.Count(one.String(), "\n") || b.Bytes != one.Len() {
			t.Errorf("batch says %d rows %d bytes; holds %q", b.Rows, b.Bytes, one.String())
		}
		got = append(got, one.String())
	}
	want := []string{"{}\n{}\n{}\n{}\n", "{}\n{}\n", `{"long":"` + strings.Repeat("x", 30) + "\"}\n", "{}\n{}\n"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("batches: got %q; want %q", got, want)
	}
}

func TestBackoffBounded(t *testing.T) {
	f := &Flusher{opts: Options{MinBackoff: 10 * time.Second, MaxBackoff: time.Minute}}
	for attempt := 1; attempt <= 200; attempt++ {
		// Retry k waits between half and all of min(MinBackoff*2^(k-1), MaxBackoff).
		full := time.Minute
		if attempt <= 3 {
			full = 10 * time.Second << (attempt - 1)
		}
		for range 20 {
			if d := f.backoff(attempt); d < full/2 || d > full {
				t.Fatalf("backoff(%d) = %s; want within [%s, %s]", attempt, d, full/2, full)
			}
		}
	}
}

// TestBacklogMerged: batches sealed one interval at a time while a stream
// waited are sent together, up to the batch limits.
func TestBacklogMerged(t *testing.T) {
	p := policy{rows: 10, bytes: 1 << 20, interval: time.Hour}
	s := &stream{key: buffer.Key{Datasource: "ds"}}
	for range 7 { // seven interval-sealed batches of 3 rows each
		s.add(buffer.Entry{Data: []byte("{}\n{}\n{}\n"), Rows: 3, Accepted: 1}, p, time.Now())
		s.seal()
	}
	var sizes []int
	for b := s.next(p); b != nil; b = s.next(p) {
		sizes = append(sizes, b.Rows)
		s.inflight = nil
	}
	if fmt.Sprint(sizes) != "[9 9 3]" {
		t.Errorf("rows per request: got %v; want [9 9 3]", sizes)
	}
	// Batches that add up to exactly the limits are merged, rows or bytes.
	for _, lim := range []policy{{rows: 10, bytes: 1 << 20, interval: time.Hour}, {rows: 1000, bytes: 30, interval: time.Hour}} {
		s := &stream{key: buffer.Key{Datasource: "ds"}}
		for range 2 { // 5 rows, 15 bytes each
			s.add(buffer.Entry{Data: []byte("{}\n{}\n{}\n{}\n{}\n"), Rows: 5, Accepted: 1}, lim, time.Now())
			s.seal()
		}
		if b := s.next(lim); b == nil || b.Rows != 10 || b.Bytes != 30 {
			t.Errorf("limits %d rows, %d bytes: first request %+v; want both batches merged", lim.rows, lim.bytes, b)
		}
	}
}

// TestFinishWaitersShares: each waiting request of a batch is told its own
// rows: quarantined rows shared out by cumulative rounding, and after a
// short acknowledgement successful rows shared out the same way; the shares
// add up to upstream's counts and never exceed a request's rows.
func TestFinishWaitersShares(t *testing.T) {
	rowsOf := []int{1, 2, 3, 4}
	for _, tt := range []struct {
		name  string
		res   upstream.Result
		wantS []int
		wantQ []int
	}{
		{"all written", upstream.Result{SuccessfulRows: 10}, []int{1, 2, 3, 4}, []int{0, 0, 0, 0}},
		{"3 quarantined", upstream.Result{SuccessfulRows: 7, QuarantinedRows: 3}, []int{1, 2, 2, 2}, []int{0, 0, 1, 2}},
		{"short: 5 written, 2 quarantined of 10", upstream.Result{SuccessfulRows: 5, QuarantinedRows: 2}, []int{0, 1, 2, 2}, []int{0, 0, 1, 1}},
		{"nothing counted", upstream.Result{}, []int{0, 0, 0, 0}, []int{0, 0, 0, 0}},
		// Rounding would give request 3 two successful and two quarantined
		// rows of its 3: no request is told of more rows than it sent.
		{"short: 6 written, 3 quarantined of 10", upstream.Result{SuccessfulRows: 6, QuarantinedRows: 3}, []int{0, 1, 2, 2}, []int{0, 0, 1, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newBatch(buffer.Key{Datasource: "ds"}, 0)
			var ws []*buffer.Waiter
			for i, n := range rowsOf {
				w := buffer.NewWaiter()
				ws = append(ws, w)
				data := strings.Repeat(`{}`+"\n", n)
				b.add([]byte(data), n, int64(10+i), w)
			}
			b.finishWaiters(tt.res, nil)
			for i, w := range ws {
				s, q, f := w.Result()
				if s != tt.wantS[i] || q != tt.wantQ[i] || f != nil {
					t.Errorf("request %d (%d rows): told %d successful, %d quarantined (%v); want %d and %d",
						i, rowsOf[i], s, q, f, tt.wantS[i], tt.wantQ[i])
				}
			}
		})
	}
	b := newBatch(buffer.Key{}, 0)
	w := buffer.NewWaiter()
	b.add([]byte("{}\n"), 1, 1, w)
	b.finishWaiters(upstream.Result{}, &buffer.Failure{Status: 400, Message: "no"})
	if s, q, f := w.Result(); s != 0 || q != 0 || f == nil || f.Status != 400 {
		t.Errorf("a refused batch: told %d, %d, %+v; want the failure", s, q, f)
	}
}

// TestBatchRemembersItsOldestEvent: a batch's first event time is the
// earliest of its parts', whatever order they were added in.
func TestBatchRemembersItsOldestEvent(t *testing.T) {
	b := newBatch(buffer.Key{}, 0)
	for _, at := range []int64{50, 30, 70, 30} {
		b.add([]byte("{}\n"), 1, at, nil)
	}
	if b.First != 30 {
		t.Errorf("First = %d; want 30, the earliest", b.First)
	}
}

// TestSplitKeepsCounts: each half of a split batch says how many rows and
// bytes it holds (dead letters and metrics report them), also when the cut
// falls inside one request's piece.
func TestSplitKeepsCounts(t *testing.T) {
	b := newBatch(buffer.Key{Datasource: "ds"}, 0)
	b.add([]byte("{\"a\":1}\n{\"a\":22}\n{\"a\":333}\n"), 3, 1, buffer.NewWaiter())
	b.add([]byte("{}\n"), 1, 2, nil)
	first, second := b.split()
	for i, h := range []*batch{first, second} {
		var data bytes.Buffer
		if _, err := h.WriteTo(&data); err != nil {
			t.Fatal(err)
		}
		if h.Rows != 2 || h.Rows != strings.Count(data.String(), "\n") || h.Bytes != data.Len() {
			t.Errorf("half %d says %d rows %d bytes; holds %q (want 2 rows)", i, h.Rows, h.Bytes, data.String())
		}
	}
}
