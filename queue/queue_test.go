package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/internal/natstest"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// open opens a queue on ns in front of buf, without its bridge; the queue
// is closed when the test ends.
func open(t *testing.T, ns *natstest.Server, buf *buffer.Buffer, opts Options) *Queue {
	t.Helper()
	return openLogging(t, ns, buf, opts, slog.New(slog.DiscardHandler))
}

// openLogging is open with the queue's log going to log.
func openLogging(t *testing.T, ns *natstest.Server, buf *buffer.Buffer, opts Options, log *slog.Logger) *Queue {
	t.Helper()
	opts.URLs = ns.URL()
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 64 << 20
	}
	q, err := Open(buf, opts, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// runBridge runs q's bridge until the returned stop is called or the test
// ends; stop returns once Run has.
func runBridge(t *testing.T, q *Queue) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// finish does what the flusher does with everything in buf: tells each
// entry's waiter the outcome f (nil: delivered), as the one piece it sent,
// and releases the entry.
func finish(buf *buffer.Buffer, f *buffer.Failure) int {
	n := 0
	for _, e := range buf.Take(nil) {
		ok := e.Rows
		if f != nil {
			ok = 0
		}
		if e.Waiter != nil {
			e.Waiter.AddPart()
			e.Waiter.Finish(ok, 0, f)
		}
		buf.Release(e.Key, e.Rows, e.Data)
		n += e.Rows
	}
	return n
}

// client is a JetStream client of its own on ns, closed when the test ends.
func client(t *testing.T, ns *natstest.Server) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// streamMsgs is how many messages the stream holds.
func streamMsgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// wantCount checks a counter's value.
func wantCount(t *testing.T, name string, c prometheus.Collector, want float64) {
	t.Helper()
	if got := testutil.ToFloat64(c); got != want {
		t.Errorf("%s = %v; want %v", name, got, want)
	}
}

func newBuffer() *buffer.Buffer {
	return buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
}

func rows(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// TestWaitOutcomeCrossesReplicas: a wait=true request accepted by one
// replica and delivered by another gets the delivering replica's outcome,
// a success or upstream's refusal; either way the message is acked and
// leaves the stream.
func TestWaitOutcomeCrossesReplicas(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	opts := Options{Stream: "CROSS", Subject: "cross"}
	front := open(t, ns, newBuffer(), opts) // accepts, runs no bridge
	back := newBuffer()
	q := open(t, ns, back, opts)
	runBridge(t, q)
	key := buffer.Key{Datasource: "events"}

	for _, tc := range []struct {
		name    string
		failure *buffer.Failure
	}{
		{"delivered", nil},
		{"refused", &buffer.Failure{Status: 403, Message: "invalid token", Reason: "token_denied"}},
	} {
		w := buffer.NewWaiter()
		if err := front.PutWaiting(key, rows(`{"a":1}`, `{"a":2}`), w); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, "the other replica to buffer the rows", func() bool { return back.Len() == 2 })
		finish(back, tc.failure)
		select {
		case <-w.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the accepting replica never heard the outcome", tc.name)
		}
		ok, _, f := w.Result()
		switch {
		case tc.failure == nil && (ok != 2 || f != nil):
			t.Errorf("%s: result %d rows, failure %+v; want 2 rows and none", tc.name, ok, f)
		case tc.failure != nil && (ok != 0 || f == nil || f.Status != 403 || f.Message != "invalid token" || f.Reason != "token_denied"):
			t.Errorf("%s: result %d rows, failure %+v; want upstream's 403 and its message", tc.name, ok, f)
		}
	}
	poll.Until(t, "both messages acked and gone from the stream", func() bool { return streamMsgs(t, js, "CROSS") == 0 })
	wantCount(t, "acked", q.m.acked, 2)
	wantCount(t, "naked", q.m.naked, 0)
}

// TestRetainedRowsAreRedelivered: rows the flusher could not finish before
// it stopped (Retained) are naked, and JetStream hands them out again.
func TestRetainedRowsAreRedelivered(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := newBuffer()
	q := open(t, ns, buf, Options{Stream: "KEEP", Subject: "keep"})
	runBridge(t, q)
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`), nil); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the message buffered", func() bool { return buf.Len() == 1 })
	finish(buf, &buffer.Failure{Retained: true})
	poll.Until(t, "the message buffered again", func() bool { return buf.Len() == 1 })
	wantCount(t, "naked", q.m.naked, 1)
	wantCount(t, "redelivered", q.m.redelivered, 1)
	if got := streamMsgs(t, js, "KEEP"); got != 1 {
		t.Errorf("stream holds %d messages; want 1 (kept for another replica)", got)
	}
}

// TestMaxDeliverDeadLetters: a message on its QUEUE_MAX_DELIVER-th delivery
// is dead-lettered with reason max_deliver and its waiting client told so,
// instead of going round again.
func TestMaxDeliverDeadLetters(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := newBuffer()
	var dead deadLetters
	q := open(t, ns, buf, Options{Stream: "MAXD", Subject: "maxd", MaxDeliver: 3, DeadLetter: dead.write})
	w := buffer.NewWaiter()
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`), w); err != nil {
		t.Fatal(err)
	}
	// Two deliveries that another replica gave up on.
	cons, err := js.Consumer(context.Background(), "MAXD", q.opts.Consumer)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			if err := m.Nak(); err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n != 1 {
			t.Fatalf("fetched %d messages; want 1 (%v)", n, batch.Error())
		}
	}
	runBridge(t, q)
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting client was never told")
	}
	if _, _, f := w.Result(); f == nil || f.Reason != reasonMaxDeliver || f.Status != 500 || !strings.Contains(f.Message, "QUEUE_MAX_DELIVER") {
		t.Errorf("failure %+v; want status 500, reason max_deliver, QUEUE_MAX_DELIVER named", f)
	}
	if got := dead.list(); len(got) != 1 || got[0] != "events max_deliver: "+`{"a":1}`+"\n" {
		t.Errorf("dead letters %q; want the one row with reason max_deliver", got)
	}
	if buf.Len() != 0 {
		t.Errorf("%d events buffered; want 0", buf.Len())
	}
	wantCount(t, "dead_lettered{max_deliver}", q.m.deadLettered.WithLabelValues(reasonMaxDeliver), 1)
	poll.Until(t, "the message terminated and gone from the stream", func() bool { return streamMsgs(t, js, "MAXD") == 0 })
}

// TestCloseNaksHeldMessages: a replica that stops while its buffer holds
// messages naks them, and another replica delivers them.
func TestCloseNaksHeldMessages(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	opts := Options{Stream: "HAND", Subject: "hand"}
	first := newBuffer()
	q1 := open(t, ns, first, opts)
	stop := runBridge(t, q1)
	if err := q1.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`, `{"a":2}`), nil); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the first replica to buffer the rows", func() bool { return first.Len() == 2 })
	if got := q1.held.len(); got != 1 {
		t.Errorf("held = %d; want 1", got)
	}
	stop()
	if err := q1.Close(); err != nil {
		t.Fatal(err)
	}
	wantCount(t, "naked", q1.m.naked, 1)
	second := newBuffer()
	q2 := open(t, ns, second, opts)
	runBridge(t, q2)
	poll.Until(t, "the second replica to buffer the rows", func() bool { return second.Len() == 2 })
	wantCount(t, "redelivered", q2.m.redelivered, 1)
	// The first replica's flusher finishing late must not ack what it gave away.
	finish(first, nil)
	if got := testutil.ToFloat64(q1.m.acked); got != 0 {
		t.Errorf("first replica acked %v after Close; want 0", got)
	}
	if got := streamMsgs(t, js, "HAND"); got != 1 {
		t.Errorf("stream holds %d messages; want 1 (kept for another replica)", got)
	}
}

// TestStopWhileWaitingForRoom: a message fetched while the buffer has no
// room for it waits; a replica that stops meanwhile gives it back once,
// without spending its deliveries, and another replica delivers it.
func TestStopWhileWaitingForRoom(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := buffer.New(buffer.Options{MaxEvents: 3, MaxBytes: 1 << 20})
	if err := buf.Put(buffer.Key{Datasource: "local"}, rows(`{"held":1}`)); err != nil {
		t.Fatal(err)
	}
	q := open(t, ns, buf, Options{Stream: "ROOM", Subject: "room"})
	stop := runBridge(t, q)
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`, `{"a":2}`, `{"a":3}`), nil); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the bridge to fetch the message", func() bool { return q.held.len() == 1 })
	stop()
	wantCount(t, "naked", q.m.naked, 1)
	wantCount(t, "acked", q.m.acked, 0)
	if buf.Len() != 1 {
		t.Errorf("%d events buffered; want only the 1 already there", buf.Len())
	}
	if got := streamMsgs(t, js, "ROOM"); got != 1 {
		t.Errorf("stream holds %d messages; want 1 (kept for another replica)", got)
	}
	other := newBuffer()
	q2 := open(t, ns, other, Options{Stream: "ROOM", Subject: "room"})
	runBridge(t, q2)
	poll.Until(t, "another replica to buffer the rows", func() bool { return other.Len() == 3 })
	wantCount(t, "dead_lettered{max_deliver}", q2.m.deadLettered.WithLabelValues(reasonMaxDeliver), 0)
}

// TestUnbufferableMessagesDeadLetter: a message larger than this replica's
// whole buffer, or for a token upstream just refused, is dead-lettered with
// its reason instead of going round forever.
func TestUnbufferableMessagesDeadLetter(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := buffer.New(buffer.Options{MaxEvents: 2, MaxBytes: 1 << 20})
	var dead deadLetters
	q := open(t, ns, buf, Options{Stream: "NOFIT", Subject: "nofit", ClientTokens: true, DeadLetter: dead.write})
	denied := buffer.Key{Datasource: "events", Token: "refused-token"}
	buf.Deny(denied, time.Now().Add(time.Hour))
	if err := q.PutWaiting(buffer.Key{Datasource: "big", Token: "t"}, rows(`{"a":1}`, `{"a":2}`, `{"a":3}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := q.PutWaiting(denied, rows(`{"a":4}`), nil); err != nil {
		t.Fatal(err)
	}
	runBridge(t, q)
	poll.Until(t, "two dead letters", func() bool { return len(dead.list()) == 2 })
	got := strings.Join(dead.list(), "|")
	if !strings.Contains(got, "big too_large: ") || !strings.Contains(got, "events token_denied: ") {
		t.Errorf("dead letters %q; want one too_large and one token_denied", got)
	}
	wantCount(t, "dead_lettered{too_large}", q.m.deadLettered.WithLabelValues(reasonTooLarge), 3)
	wantCount(t, "dead_lettered{token_denied}", q.m.deadLettered.WithLabelValues(reasonDenied), 1)
	poll.Until(t, "both terminated and gone from the stream", func() bool { return streamMsgs(t, js, "NOFIT") == 0 })
}

// TestFullStreamRefuses: a stream at QUEUE_MAX_BYTES refuses new requests
// with buffer.ErrFull (the client's 429), counted as full, and forgets a
// refused wait=true request at once.
func TestFullStreamRefuses(t *testing.T) {
	ns := natstest.Start(t)
	q := open(t, ns, newBuffer(), Options{Stream: "FULL", Subject: "full", MaxBytes: 4096})
	line := []byte(`{"pad":"` + strings.Repeat("x", 1000) + `"}`)
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		err = q.PutWaiting(buffer.Key{Datasource: "events"}, [][]byte{line}, nil)
	}
	if !errors.Is(err, buffer.ErrFull) {
		t.Fatalf("publishing past the stream's limit: %v; want buffer.ErrFull", err)
	}
	wantCount(t, "publishes{full}", q.m.publishes.WithLabelValues(resultFull), 1)
	wantCount(t, "publishes{error}", q.m.publishes.WithLabelValues(resultError), 0)
	// A wait=true request refused so keeps nothing waiting for an outcome.
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, [][]byte{line}, buffer.NewWaiter()); !errors.Is(err, buffer.ErrFull) {
		t.Fatalf("wait=true past the stream's limit: %v; want buffer.ErrFull", err)
	}
	q.waits.mu.Lock()
	defer q.waits.mu.Unlock()
	if n := len(q.waits.m); n != 0 {
		t.Errorf("%d wait=true entries kept for refused requests; want 0", n)
	}
}

// TestHeldMessagesAreNotRedelivered: a message waiting in the buffer longer
// than the ack wait (a slow upstream) is kept in progress, so JetStream
// does not hand it to a replica a second time. Nothing here can be waited
// on: the test must let more than two ack waits pass.
func TestHeldMessagesAreNotRedelivered(t *testing.T) {
	ns := natstest.Start(t)
	buf := newBuffer()
	q := open(t, ns, buf, Options{Stream: "SLOW", Subject: "slow", AckWait: 1500 * time.Millisecond})
	runBridge(t, q)
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`), nil); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the message buffered", func() bool { return buf.Len() == 1 })
	time.Sleep(4 * time.Second)
	if got := testutil.ToFloat64(q.m.fetched); got != 1 {
		t.Errorf("fetched %v times while held; want 1", got)
	}
	if buf.Len() != 1 {
		t.Errorf("%d events buffered; want 1", buf.Len())
	}
}

// TestWaitEntriesExpire: a wait=true entry is forgotten once its deadline
// has passed (the handler answered 503), and an outcome arriving after
// that is ignored.
func TestWaitEntriesExpire(t *testing.T) {
	ws := waits{m: make(map[string]*waiting)}
	t0 := time.Now()
	keep := ws.add(buffer.NewWaiter(), t0.Add(time.Second))
	gone := ws.add(buffer.NewWaiter(), t0)
	if keep == gone {
		t.Fatalf("two entries got the same id %q", keep)
	}
	ws.expire(t0) // at, not after, its deadline: kept
	if len(ws.m) != 2 {
		t.Fatalf("%d entries after expire at the deadline; want 2", len(ws.m))
	}
	ws.expire(t0.Add(time.Millisecond))
	if ws.take(gone) != nil {
		t.Error("an entry past its deadline was still there")
	}
	if ws.take(keep) == nil {
		t.Error("an entry before its deadline was forgotten")
	}
	if ws.take(keep) != nil {
		t.Error("an entry was taken twice")
	}
}

// TestQuietWhenAllIsWell: a message fetched, buffered, delivered and acked
// leaves no warning or error in the log: the log is for trouble.
func TestQuietWhenAllIsWell(t *testing.T) {
	ns := natstest.Start(t)
	var logged logbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))
	buf := newBuffer()
	q := openLogging(t, ns, buf, Options{Stream: "CALM", Subject: "calm"}, log)
	// More messages than one fetch asks for: fetches that fill up and
	// fetches that end short.
	// Some wait=true, whose outcomes are published back.
	const n = fetchBatch + 44
	var waiters []*buffer.Waiter
	for i := range n {
		var w *buffer.Waiter
		if i%10 == 0 {
			w = buffer.NewWaiter()
			waiters = append(waiters, w)
		}
		if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`), w); err != nil {
			t.Fatal(err)
		}
	}
	runBridge(t, q)
	poll.Until(t, "every message buffered", func() bool { return buf.Len() == n })
	finish(buf, nil)
	poll.Until(t, "every message acked", func() bool { return testutil.ToFloat64(q.m.acked) == n })
	for _, w := range waiters {
		<-w.Done()
	}
	if got := logged.String(); got != "" {
		t.Errorf("warnings in normal operation:\n%s", got)
	}
}

// TestOptionDefaults: what an operator sets is used as given; what is left
// unset gets the documented default.
func TestOptionDefaults(t *testing.T) {
	var zero Options
	zero.setDefaults()
	want := Options{Stream: "TBPROXY", Subject: "tbproxy.events", Replicas: 1, MaxBytes: 4 << 30, MaxAge: 168 * time.Hour,
		AckWait: 30 * time.Second, MaxDeliver: 10, Consumer: "tbproxy-flusher", PublishTimeout: 5 * time.Second,
		WaitTimeout: 10 * time.Second, SetupTimeout: 15 * time.Second}
	if fmt.Sprint(zero) != fmt.Sprint(want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", zero, want)
	}
	set := Options{Stream: "S", Subject: "s", Replicas: 3, MaxBytes: 1, MaxAge: time.Minute, AckWait: time.Second, MaxDeliver: 2,
		Consumer: "c", PublishTimeout: time.Second, WaitTimeout: time.Second, SetupTimeout: time.Second}
	got := set
	got.setDefaults()
	if fmt.Sprint(got) != fmt.Sprint(set) {
		t.Errorf("set options changed:\n got %+v\nwant %+v", got, set)
	}
}

// TestReconnectsAfterNATSRestart: a NATS server that is down for several
// reconnect attempts and comes back finds the replica reconnecting: it
// reports not ready meanwhile, and takes and delivers requests again after.
func TestReconnectsAfterNATSRestart(t *testing.T) {
	ns := natstest.Start(t)
	buf := newBuffer()
	q := open(t, ns, buf, Options{Stream: "BACK", Subject: "back"})
	runBridge(t, q)
	ns.Stop()
	poll.Until(t, "the replica to notice", func() bool { return q.Ready() != nil })
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`), nil); !errors.Is(err, buffer.ErrStorage) {
		t.Errorf("publishing while NATS is down: %v; want an error wrapping buffer.ErrStorage (503)", err)
	}
	time.Sleep(time.Second) // several reconnect attempts fail
	ns.Start()
	poll.Until(t, "the replica to reconnect", func() bool { return q.Ready() == nil })
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":2}`), nil); err != nil {
		t.Fatalf("publishing after NATS came back: %v", err)
	}
	poll.Until(t, "the request buffered", func() bool { return buf.Len() == 1 })
}

// TestWarnsWhenMaxPayloadIsTooSmall: Open warns, naming both settings,
// when the server's max_payload cannot carry a request of MAX_BODY_BYTES,
// and says nothing when it can.
func TestWarnsWhenMaxPayloadIsTooSmall(t *testing.T) {
	ns := natstest.StartStock(t, true) // max_payload 1 MB
	for _, tc := range []struct {
		maxBody int
		warn    bool
	}{
		{10 << 20, true},
		{(1 << 20) - messageOverhead, false},
		{(1 << 20) - messageOverhead + 1, true},
		{0, false},
	} {
		var logged logbuf.Buffer
		log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))
		openLogging(t, ns, newBuffer(), Options{Stream: "PAY", Subject: "pay", MaxBodyBytes: tc.maxBody}, log)
		got := logged.String()
		if warned := strings.Contains(got, "max_payload") && strings.Contains(got, "MAX_BODY_BYTES"); warned != tc.warn {
			t.Errorf("MAX_BODY_BYTES %d: logged %q; want a warning: %v", tc.maxBody, got, tc.warn)
		}
	}
}

// TestWaitOutcomeWithinWaitTimeout: a wait=true request whose rows are
// delivered late, but within WAIT_TIMEOUT, still gets its outcome: the
// entry waiting for it is kept at least that long.
func TestWaitOutcomeWithinWaitTimeout(t *testing.T) {
	ns := natstest.Start(t)
	opts := Options{Stream: "LATE", Subject: "late", WaitTimeout: 6 * time.Second, AckWait: 600 * time.Millisecond}
	front := open(t, ns, newBuffer(), opts)
	w := buffer.NewWaiter()
	if err := front.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`), w); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // no replica delivers yet; housekeeping runs every 200ms
	back := newBuffer()
	runBridge(t, open(t, ns, back, opts))
	poll.Until(t, "a replica to buffer the rows", func() bool { return back.Len() == 1 })
	finish(back, nil)
	select {
	case <-w.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the outcome of a request delivered within WAIT_TIMEOUT was dropped")
	}
	if ok, _, f := w.Result(); ok != 1 || f != nil {
		t.Errorf("result %d rows, %+v; want 1 row delivered", ok, f)
	}
}
