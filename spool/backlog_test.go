package spool

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// consumer plays the flusher one entry at a time: it takes what the buffer
// holds and delivers it, recording every row in the order it arrived.
type consumer struct {
	buf  *buffer.Buffer
	rows []string // "datasource row"
}

// deliverAll delivers until want rows arrived.
func (c *consumer) deliverAll(t *testing.T, want int) {
	t.Helper()
	timeout := time.After(poll.Timeout)
	for len(c.rows) < want {
		select {
		case <-timeout:
			t.Fatalf("%d of %d rows delivered after %s", len(c.rows), want, poll.Timeout)
		case <-c.buf.Ready():
		case <-time.After(10 * time.Millisecond): // Ready coalesces kicks; look again
		}
		for _, e := range c.buf.Take(nil) {
			for _, row := range strings.Split(strings.TrimSuffix(string(e.Data), "\n"), "\n") {
				c.rows = append(c.rows, e.Key.Datasource+" "+row)
			}
			finish(c.buf, e, nil)
		}
	}
}

// TestSpillAdmitsWhatTheDiskHolds: with the buffer full (upstream down),
// requests are still accepted, onto disk, far past the buffer's size; the
// buffer stays at its limit; once upstream is back every row arrives once,
// in order.
func TestSpillAdmitsWhatTheDiskHolds(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 10, MaxBytes: 1 << 20})
	s, _, reg := openObserved(t, t.TempDir(), buf, Options{SegmentBytes: 4 << 10})
	const n = 1000
	var want []string
	for i := range n {
		row := fmt.Sprintf(`{"i":%d}`, i)
		if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(row), nil); err != nil {
			t.Fatalf("request %d: %v; want it accepted onto disk", i, err)
		}
		want = append(want, "ds "+row)
	}
	if buf.Len() != 10 {
		t.Fatalf("the buffer holds %d events; want its limit, 10", buf.Len())
	}
	if got := metric(t, reg, "tbproxy_spool_backlog_events"); got != n-10 {
		t.Errorf("tbproxy_spool_backlog_events: %v; want %d", got, n-10)
	}
	if got := metric(t, reg, "tbproxy_spool_spilled_events_total"); got != n-10 {
		t.Errorf("tbproxy_spool_spilled_events_total: %v; want %d", got, n-10)
	}
	spilledBytes := 0
	for _, r := range want[10:] {
		spilledBytes += len(r) - len("ds ") + 1 // a row and its '\n'
	}
	if got := metric(t, reg, "tbproxy_spool_backlog_bytes"); got != float64(spilledBytes) {
		t.Errorf("tbproxy_spool_backlog_bytes: %v; want %d", got, spilledBytes)
	}
	c := &consumer{buf: buf}
	c.deliverAll(t, n)
	if !slices.Equal(c.rows, want) {
		t.Errorf("delivered %d rows, first differences at %v; want each once, in order", len(c.rows), firstDiff(c.rows, want))
	}
	poll.Until(t, "the backlog to drain and its segments to go", func() bool {
		return metric(t, reg, "tbproxy_spool_backlog_events") == 0 && len(segments(t, s.opts.Dir)) == 1
	})
}

func firstDiff(got, want []string) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("%d: %q, want %q", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("lengths %d and %d", len(got), len(want))
}

// TestBacklogStreamsTakeTurns: one datasource's backlog on disk does not
// hold back another's fresh events: the feeder interleaves streams, so the
// second datasource's request arrives within the first's first turn, while
// each datasource's rows keep their order.
func TestBacklogStreamsTakeTurns(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s := open(t, t.TempDir(), buf, Options{})
	const big = 5 * feedRecords
	for i := range big {
		put(t, s, "big", fmt.Sprintf(`{"i":%d}`, i))
	}
	put(t, s, "fresh", `{"fresh":1}`)
	c := &consumer{buf: buf}
	c.deliverAll(t, big+1)
	at := slices.Index(c.rows, `fresh {"fresh":1}`)
	if at < 0 || at > feedRecords+2 {
		t.Errorf("the fresh datasource's row arrived %dth of %d; want it within the first turn (%d records)", at+1, big+1, feedRecords)
	}
	var order []string
	for _, r := range c.rows {
		if strings.HasPrefix(r, "big ") {
			order = append(order, r)
		}
	}
	for i, r := range order {
		if want := fmt.Sprintf(`big {"i":%d}`, i); r != want {
			t.Fatalf("row %d of the backlog: %q; want %q (oldest first)", i, r, want)
		}
	}
}

// TestBacklogAcrossRestarts: a backlog on disk survives a kill and a clean
// shutdown alike; the next start replays it once, oldest first, serving
// at once (Recover does not wait), and new requests go behind it.
func TestBacklogAcrossRestarts(t *testing.T) {
	for _, kill := range []bool{true, false} {
		t.Run(map[bool]string{true: "kill", false: "shutdown"}[kill], func(t *testing.T) {
			dir := t.TempDir()
			buf := buffer.New(buffer.Options{MaxEvents: 5, MaxBytes: 1 << 20})
			s := open(t, dir, buf, Options{SegmentBytes: 2 << 10})
			var want []string
			for i := range 200 {
				row := fmt.Sprintf(`{"i":%d}`, i)
				put(t, s, "ds", row)
				want = append(want, "ds "+row)
			}
			if kill {
				die(s)
			} else {
				buf.Close()
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
			}
			buf2 := buffer.New(buffer.Options{MaxEvents: 5, MaxBytes: 1 << 20})
			s2, _, reg := openObserved(t, dir, buf2, Options{SegmentBytes: 2 << 10})
			if n := s2.Recover(); n != 200 {
				t.Fatalf("Recover found %d events; want 200", n)
			}
			put(t, s2, "ds", `{"after":1}`)
			want = append(want, `ds {"after":1}`)
			c := &consumer{buf: buf2}
			c.deliverAll(t, len(want))
			if !slices.Equal(c.rows, want) {
				t.Errorf("delivered %d rows (%s); want each once, the earlier run's first", len(c.rows), firstDiff(c.rows, want))
			}
			if got := metric(t, reg, "tbproxy_spool_replayed_events_total"); got != 200 {
				t.Errorf("tbproxy_spool_replayed_events_total: %v; want 200", got)
			}
			poll.Until(t, "every delivered segment deleted", func() bool { return len(segments(t, dir)) == 1 })
		})
	}
}

// TestSpilledRequestWaiterGetsItsOutcome: a wait=true client whose rows
// were spilled is told their outcome once they were fed and delivered; one
// that stopped waiting is let go of, and its rows are still delivered.
func TestSpilledRequestWaiterGetsItsOutcome(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s := open(t, t.TempDir(), buf, Options{})
	put(t, s, "ds", `{"held":1}`)
	w, gone := buffer.NewWaiter(), buffer.NewWaiter()
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"waits":1}`), w); err != nil {
		t.Fatal(err)
	}
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"gone":1}`), gone); err != nil {
		t.Fatal(err)
	}
	gone.Abandon()
	s.mu.Lock()
	held := len(s.waiting)
	s.mu.Unlock()
	if held != 1 {
		t.Fatalf("%d waiters held for spilled rows; want only the one still waiting", held)
	}
	select {
	case <-w.Done():
		t.Fatal("the waiter was told an outcome before its rows were delivered")
	default:
	}
	c := &consumer{buf: buf}
	c.deliverAll(t, 3)
	select {
	case <-w.Done():
	case <-time.After(poll.Timeout):
		t.Fatal("the waiting client was never told its rows were delivered")
	}
	if ok, _, f := w.Result(); ok != 1 || f != nil {
		t.Errorf("the waiter got %d rows, %v; want 1 delivered", ok, f)
	}
	if !slices.Contains(c.rows, `ds {"gone":1}`) {
		t.Error("the rows of the client that stopped waiting were not delivered")
	}
}

// TestSpoolFullRetryAfterAndReady: past MaxBytes a request is refused with
// a FullError naming the spool and a Retry-After; /ready's check turns not
// ready above the high-water mark, whatever the buffer holds.
func TestSpoolFullRetryAfterAndReady(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s := open(t, t.TempDir(), buf, Options{MaxBytes: 4 << 10, SegmentBytes: 1 << 10, HighWatermark: 0.5})
	if err := s.Ready(); err != nil {
		t.Fatalf("an empty spool: %v; want ready", err)
	}
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		err = s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"padding":"xxxxxxxxxxxxxxxxxxxx"}`), nil)
	}
	var full *buffer.FullError
	if !errors.As(err, &full) || !errors.Is(err, buffer.ErrFull) || !strings.Contains(full.Limit, "SPOOL_MAX_BYTES") {
		t.Fatalf("at the limit: %v; want a FullError naming SPOOL_MAX_BYTES", err)
	}
	if full.RetryAfter < time.Second || full.RetryAfter > time.Minute {
		t.Errorf("Retry-After %v; want within [1s, 60s]", full.RetryAfter)
	}
	if err := s.Ready(); err == nil || !strings.Contains(err.Error(), "spool") {
		t.Errorf("a full spool: %v; want not ready, naming the spool", err)
	}
	c := &consumer{buf: buf}
	c.deliverAll(t, 1)
	poll.Until(t, "the spool ready again once delivered", func() bool {
		c.deliverAll(t, len(c.rows)) // keep the flusher's part going
		for _, e := range buf.Take(nil) {
			finish(buf, e, nil)
		}
		return s.Ready() == nil
	})
}

// TestMaxStreamsBoundsTheBacklog: the streams waiting on disk, each held in
// memory, are bounded: a spill for one more is refused as too many
// datasources, and accepted again once a stream's backlog is fed.
func TestMaxStreamsBoundsTheBacklog(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s := open(t, t.TempDir(), buf, Options{MaxStreams: 2})
	put(t, s, "held", `{}`)
	put(t, s, "a", `{}`)
	put(t, s, "b", `{}`)
	if err := s.PutWaiting(buffer.Key{Datasource: "c"}, lines(`{}`), nil); !errors.Is(err, buffer.ErrTooManyDatasources) {
		t.Fatalf("a third stream on disk: %v; want ErrTooManyDatasources", err)
	}
	put(t, s, "a", `{"more":1}`) // a stream already waiting takes more
	c := &consumer{buf: buf}
	c.deliverAll(t, 4)
	if err := s.PutWaiting(buffer.Key{Datasource: "c"}, lines(`{}`), nil); err != nil {
		t.Errorf("after the backlog drained: %v; want accepted", err)
	}
}

// TestBacklogMetrics: the oldest age and the time until full say what an
// operator needs during an outage: both move while the disk fills, and the
// estimate is +Inf while nothing grows.
func TestBacklogMetrics(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s, _, reg := openObserved(t, t.TempDir(), buf, Options{MaxBytes: 1 << 30})
	if got := metric(t, reg, "tbproxy_spool_full_in_seconds"); !math.IsInf(got, 1) {
		t.Errorf("an idle spool: tbproxy_spool_full_in_seconds %v; want +Inf", got)
	}
	if got := metric(t, reg, "tbproxy_spool_backlog_oldest_seconds"); got != 0 {
		t.Errorf("no backlog: oldest %v; want 0", got)
	}
	put(t, s, "ds", `{}`)
	put(t, s, "ds", `{"spilled":1}`)
	start := time.Now()
	var full float64
	poll.Until(t, "a finite estimate while the spool grows", func() bool {
		put(t, s, "ds", `{"spilled":2}`)
		full = metric(t, reg, "tbproxy_spool_full_in_seconds")
		return !math.IsInf(full, 1)
	})
	if full <= 0 {
		t.Errorf("tbproxy_spool_full_in_seconds %v; want a positive estimate", full)
	}
	if got := metric(t, reg, "tbproxy_spool_backlog_oldest_seconds"); got < 0.9 || got > time.Since(start).Seconds()+1 {
		t.Errorf("oldest event on disk %vs old; want about the %v since it was spilled", got, time.Since(start))
	}
	if got := metric(t, reg, "tbproxy_spool_max_bytes"); got != 1<<30 {
		t.Errorf("tbproxy_spool_max_bytes %v", got)
	}
}

// TestVersion2SegmentReplayed: a segment an older release wrote (version 2
// header, records without flags or time) is replayed after an upgrade.
func TestVersion2SegmentReplayed(t *testing.T) {
	dir := t.TempDir()
	m := syncMarker{1, 2, 3, 4, 5, 6, 7, 8}
	b := append([]byte("TBSPOOL\x02"), m[:]...)
	for i := range 3 {
		p := []byte{kindDataV2, 0, 2, 'd', 's', 1}
		p = append(p, fmt.Sprintf(`{"v2":%d}`+"\n", i)...)
		b = frame(b, m, p)
	}
	if err := os.WriteFile(filepath.Join(dir, "seg-0000000000000007.spool"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{})
	if n, err := s.Replay(context.Background()); n != 3 || err != nil {
		t.Fatalf("Replay: %d, %v; want 3", n, err)
	}
	c := &consumer{buf: buf}
	c.deliverAll(t, 3)
	if want := []string{`ds {"v2":0}`, `ds {"v2":1}`, `ds {"v2":2}`}; !slices.Equal(c.rows, want) {
		t.Errorf("replayed %q; want %q", c.rows, want)
	}
}

// TestBacklogRefilledInTheSameSegment: a stream whose records on disk were
// all fed, and that spills again into the same segment, has only its new
// records fed: the ones fed before are never fed twice.
func TestBacklogRefilledInTheSameSegment(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s := open(t, t.TempDir(), buf, Options{})
	c := &consumer{buf: buf}
	put(t, s, "ds", `{"r":0}`) // held: the buffer is full
	for i := 1; i <= 3; i++ {
		put(t, s, "ds", fmt.Sprintf(`{"r":%d}`, i)) // spilled
		c.deliverAll(t, i)                          // the one before is delivered
		poll.Until(t, "the spilled row fed", func() bool { return buf.Len() == 1 })
	}
	c.deliverAll(t, 4)
	put(t, s, "ds", `{"r":4}`)
	c.deliverAll(t, 5)
	want := []string{`ds {"r":0}`, `ds {"r":1}`, `ds {"r":2}`, `ds {"r":3}`, `ds {"r":4}`}
	if !slices.Equal(c.rows, want) {
		t.Errorf("delivered %q; want %q, each once", c.rows, want)
	}
}

// TestBacklogUnderConcurrentLoad: many writers on several datasources,
// a buffer far smaller than what they send, small segments that roll all
// the time, and a consumer delivering meanwhile: every row arrives exactly
// once, and each writer's rows in the order it sent them.
func TestBacklogUnderConcurrentLoad(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 7, MaxBytes: 1 << 20})
	s := open(t, t.TempDir(), buf, Options{SegmentBytes: 2 << 10})
	const writers, each = 8, 300
	done := make(chan struct{})
	go func() {
		defer close(done)
		for w := range writers {
			go func() {
				for i := range each {
					put(t, s, fmt.Sprintf("ds%d", w%3), fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))
				}
			}()
		}
	}()
	c := &consumer{buf: buf}
	c.deliverAll(t, writers*each)
	<-done
	seen := map[string]int{}
	last := map[int]int{}
	for _, r := range c.rows {
		seen[r]++
		var w, i int
		if _, err := fmt.Sscanf(r[strings.Index(r, " ")+1:], `{"w":%d,"i":%d}`, &w, &i); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[w]; ok && i < prev {
			t.Errorf("writer %d: row %d after row %d", w, i, prev)
		}
		last[w] = i
	}
	for r, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", r, n)
		}
	}
	if len(seen) != writers*each {
		t.Errorf("%d distinct rows delivered; want %d", len(seen), writers*each)
	}
}

// TestBacklogKilledUnderLoad: a process killed with a backlog on disk and
// some of it delivered; the next one recovers it while new writers spill
// behind it: every row arrives, and none of those delivered before the
// kill and written down as done arrives again.
func TestBacklogKilledUnderLoad(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 2 << 10}
	load := func(s *Spool, round, writers, each int) {
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					put(t, s, fmt.Sprintf("ds%d", i%3), fmt.Sprintf(`{"r":%d,"w":%d,"i":%d}`, round, w, i))
				}
			})
		}
		wg.Wait()
	}
	buf := buffer.New(buffer.Options{MaxEvents: 7, MaxBytes: 1 << 20})
	s := open(t, dir, buf, opts)
	c := &consumer{buf: buf}
	load(s, 0, 4, 100)
	c.deliverAll(t, 200) // half delivered, the rest on disk or in memory
	s.mu.Lock()
	s.flushDoneLocked()
	s.mu.Unlock()
	s.flushSealed()
	die(s)
	first := len(c.rows)

	buf2 := buffer.New(buffer.Options{MaxEvents: 7, MaxBytes: 1 << 20})
	s2 := open(t, dir, buf2, opts)
	s2.Recover()
	c.buf = buf2
	go load(s2, 1, 4, 100)
	c.deliverAll(t, 800-first+first) // every row once, if none comes twice
	seen := map[string]int{}
	for _, r := range c.rows {
		seen[r]++
	}
	for r, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", r, n)
		}
	}
	if len(seen) != 800 {
		t.Errorf("%d distinct rows; want 800", len(seen))
	}
}

// TestCloseWritesFeedsTheBacklog: a shutdown refuses new requests and feeds
// what waits on disk to the buffer while the flusher still delivers; with
// nothing delivering, it gives up when its time is out and says how many
// events stay on disk for the next start.
func TestCloseWritesFeedsTheBacklog(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 2, MaxBytes: 1 << 20})
	s := open(t, t.TempDir(), buf, Options{})
	for i := range 10 {
		put(t, s, "ds", fmt.Sprintf(`{"i":%d}`, i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if left, err := s.CloseWrites(ctx); left != 8 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("nothing delivering: CloseWrites %d, %v; want 8 events left, DeadlineExceeded", left, err)
	}
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{}`), nil); !errors.Is(err, buffer.ErrClosed) {
		t.Fatalf("a request after CloseWrites: %v; want ErrClosed", err)
	}
	type result struct {
		left int64
		err  error
	}
	done := make(chan result, 1)
	go func() {
		left, err := s.CloseWrites(context.Background())
		done <- result{left, err}
	}()
	c := &consumer{buf: buf}
	c.deliverAll(t, 10)
	if r := <-done; r.left != 0 || r.err != nil {
		t.Fatalf("delivering: CloseWrites %d, %v; want the whole backlog fed", r.left, r.err)
	}
}

// TestSpillWithFsyncAlways: with every request waiting for its fsync, the
// feeder hands spilled records over only once synced, and they all arrive,
// also when a roll seals the segment they were written to.
func TestSpillWithFsyncAlways(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s := open(t, t.TempDir(), buf, Options{Fsync: FsyncAlways, SegmentBytes: 1 << 10})
	var want []string
	for i := range 40 {
		row := fmt.Sprintf(`{"always":%d}`, i)
		put(t, s, "ds", row)
		want = append(want, "ds "+row)
	}
	c := &consumer{buf: buf}
	c.deliverAll(t, len(want))
	if !slices.Equal(c.rows, want) {
		t.Errorf("delivered %d rows (%s); want each once, in order", len(c.rows), firstDiff(c.rows, want))
	}
}

// TestSpilledRowsOfADeniedTokenAreDropped: rows spilled for a client token
// that upstream refuses before they are fed are dropped, not fed: counted
// in tbproxy_spool_dropped_events_total, logged, their waiting client told
// 403, and retired, so a restart does not replay them.
func TestSpilledRowsOfADeniedTokenAreDropped(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s, logs, reg := openObserved(t, dir, buf, Options{})
	key := buffer.Key{Token: "p.revoked-soon", Datasource: "ds"}
	put(t, s, "ds", `{"held":1}`)
	w := buffer.NewWaiter()
	if err := s.PutWaiting(key, lines(`{"spilled":1}`), w); err != nil {
		t.Fatal(err)
	}
	buf.Deny(key, time.Now().Add(time.Hour))
	c := &consumer{buf: buf}
	c.deliverAll(t, 1) // room: the feeder reaches the spilled row
	select {
	case <-w.Done():
	case <-time.After(poll.Timeout):
		t.Fatal("the waiting client was never told")
	}
	if _, _, f := w.Result(); f == nil || f.Status != 403 {
		t.Errorf("the waiter got %+v; want a 403 failure", f)
	}
	if got := metric(t, reg, "tbproxy_spool_dropped_events_total"); got != 1 {
		t.Errorf("tbproxy_spool_dropped_events_total: %v; want 1", got)
	}
	logs.waitFor(t, "spool rows dropped: upstream refused their token since they were accepted")
	// The row leaves the backlog once the feeder is done with it, just after
	// the client is told.
	poll.Until(t, "the dropped row gone from the backlog", func() bool {
		return metric(t, reg, "tbproxy_spool_backlog_events") == 0
	})
	s.Close()
	if _, rows := replayed(t, dir, Options{}); len(rows) != 0 {
		t.Errorf("a restart replayed %q; want nothing: the dropped row was retired", rows)
	}
}

// TestSpilledNamedClientIsFed: a named client's request spilled to disk is
// fed back like any other: the spool's records carry no client, so its
// stream is the datasource's, in memory and on disk alike.
func TestSpilledNamedClientIsFed(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 2, MaxBytes: 1 << 20, StreamShare: 0.5})
	s, _, _ := openObserved(t, t.TempDir(), buf, Options{SegmentBytes: 64 << 10})
	var want []string
	for i := range 20 {
		row := fmt.Sprintf(`{"i":%d}`, i)
		if err := s.PutWaiting(buffer.Key{Datasource: "ds", Client: "web"}, lines(row), nil); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		want = append(want, "ds "+row)
	}
	c := &consumer{buf: buf}
	c.deliverAll(t, 20)
	if !slices.Equal(c.rows, want) {
		t.Errorf("delivered %v; want %v", c.rows, want)
	}
}
