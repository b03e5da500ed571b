package queue

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/natstest"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// holdSlots takes every slot for groups in flight, so the committer gathers
// whatever arrives into one open group until the returned release.
func holdSlots(q *Queue) (release func()) {
	for range groupsInFlight {
		q.slots <- struct{}{}
	}
	return func() {
		for range groupsInFlight {
			<-q.slots
		}
	}
}

// burst calls put(i) for i < n, each on its own goroutine, and returns once
// every call is queued for the committer (which took it), and a wait for
// their errors.
func burst(t *testing.T, q *Queue, n int, put func(i int) error) (wait func() []error) {
	t.Helper()
	errs := make([]error, n)
	var started atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			started.Add(1)
			errs[i] = put(i)
		})
	}
	poll.Until(t, "every request started", func() bool { return started.Load() == int32(n) })
	for range 2 { // a caller counted as started may not have queued its request yet
		poll.Until(t, "every request taken by the committer", func() bool { return len(q.in) == 0 })
		time.Sleep(50 * time.Millisecond)
	}
	return func() []error { wg.Wait(); return errs }
}

// playFlusher does the flusher's part on buf until the test ends: it takes
// each entry, records its rows as "<datasource> <line>", tells its waiter
// fail(key) (nil: delivered) and releases it. It returns what was recorded
// so far.
func playFlusher(t *testing.T, buf *buffer.Buffer, fail func(buffer.Key) *buffer.Failure) (got func() []string) {
	t.Helper()
	var mu sync.Mutex
	var rows []string
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-buf.Ready():
			case <-tick.C:
			}
			for _, e := range buf.Take(nil) {
				mu.Lock()
				for l := range strings.SplitSeq(strings.TrimSuffix(string(e.Data), "\n"), "\n") {
					rows = append(rows, e.Key.Datasource+" "+l)
				}
				mu.Unlock()
				if e.Waiter != nil {
					f := fail(e.Key)
					ok := e.Rows
					if f != nil {
						ok = 0
					}
					e.Waiter.AddPart()
					e.Waiter.Finish(ok, 0, f)
				}
				buf.Release(e.Key, e.Rows, e.Data)
			}
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(rows)
	}
}

// publishRaw publishes a message as anyone with access to the subject could,
// and waits for JetStream to store it.
func publishRaw(t *testing.T, js jetstream.JetStream, subject string, header nats.Header, body []byte) {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Header = header
	m.Data = body
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// bufferedRows takes everything buf holds, tells each entry's waiter it
// was delivered, and returns its rows as "<datasource> <line>", sorted.
func bufferedRows(buf *buffer.Buffer) []string {
	var out []string
	for _, e := range buf.Take(nil) {
		for l := range strings.SplitSeq(strings.TrimSuffix(string(e.Data), "\n"), "\n") {
			out = append(out, e.Key.Datasource+" "+l)
		}
		e.Waiter.AddPart()
		e.Waiter.Finish(e.Rows, 0, nil)
		buf.Release(e.Key, e.Rows, e.Data)
	}
	slices.Sort(out)
	return out
}

func groupHeader() nats.Header { return nats.Header{hdrBatch: []string{groupVersion}} }

// waitFor registers a wait=true request with q as PutWaiting does and
// returns its waiter and hdrReply value, for messages a test writes itself.
func waitFor(q *Queue) (*buffer.Waiter, string) {
	w := buffer.NewWaiter()
	w.AddPart()
	return w, q.procID + "." + q.waits.add(w, time.Now().Add(time.Minute))
}

func waitDone(t *testing.T, w *buffer.Waiter, what string) (ok int, f *buffer.Failure) {
	t.Helper()
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the waiting client was never told", what)
	}
	ok, _, f = w.Result()
	return ok, f
}

// TestGroupCommitDeliversEachRequestOnce: many concurrent one-event
// requests for several datasources, some wait=true, are published in a few
// group messages; another replica delivers every row exactly once, and each
// wait=true request gets its own outcome: its own row count, or the refusal
// of its own datasource.
func TestGroupCommitDeliversEachRequestOnce(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	opts := Options{Stream: "GROUP", Subject: "group"}
	front := open(t, ns, newBuffer(), opts) // accepts, runs no bridge
	back := buffer.New(buffer.Options{MaxEvents: 10_000, MaxBytes: 16 << 20})
	bq := open(t, ns, back, opts)
	refusal := &buffer.Failure{Status: 403, Message: "invalid token", Reason: "token_denied"}
	delivered := playFlusher(t, back, func(k buffer.Key) *buffer.Failure {
		if k.Datasource == "refused" {
			return refusal
		}
		return nil
	})
	runBridge(t, bq)

	const n = 300
	datasources := []string{"alpha", "beta", "refused"}
	lines := func(i int) [][]byte {
		out := rows(fmt.Sprintf(`{"i":%d,"j":0}`, i))
		if i%10 == 0 { // a few of two events
			out = append(out, fmt.Appendf(nil, `{"i":%d,"j":1}`, i))
		}
		return out
	}
	waiters := make([]*buffer.Waiter, n)
	release := holdSlots(front)
	wait := burst(t, front, n, func(i int) error {
		if i%4 == 0 {
			waiters[i] = buffer.NewWaiter()
		}
		return front.PutWaiting(buffer.Key{Datasource: datasources[i%3]}, lines(i), waiters[i])
	})
	release()
	var want []string
	for i, err := range wait() {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		for _, l := range lines(i) {
			want = append(want, datasources[i%3]+" "+string(l))
		}
	}
	for i, w := range waiters {
		if w == nil {
			continue
		}
		ok, f := waitDone(t, w, fmt.Sprint("request ", i))
		switch ds := datasources[i%3]; {
		case ds == "refused" && (ok != 0 || f == nil || f.Status != 403):
			t.Errorf("request %d for %s: %d rows, %+v; want its datasource's 403", i, ds, ok, f)
		case ds != "refused" && (ok != len(lines(i)) || f != nil):
			t.Errorf("request %d for %s: %d rows, %+v; want its own %d rows delivered", i, ds, ok, f, len(lines(i)))
		}
	}
	poll.Until(t, "every row delivered", func() bool { return len(delivered()) >= len(want) })
	poll.Until(t, "every message acked and gone from the stream", func() bool { return streamMsgs(t, js, "GROUP") == 0 })
	got := delivered()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("delivered %d rows, %d distinct of the %d sent; want each exactly once", len(got), len(slices.Compact(slices.Clone(got))), len(want))
	}
	fetched := testutil.ToFloat64(bq.m.fetched)
	if fetched > 10 {
		t.Errorf("%v messages for %d requests queued together; want a few groups", fetched, n)
	}
	wantCount(t, "acked", bq.m.acked, fetched)
	wantCount(t, "naked", bq.m.naked, 0)
	wantCount(t, "publishes{ok}", front.m.publishes.WithLabelValues(resultOK), n)
}

// TestForgedGroupDeadLettersOnlyItsBadRecords: in a group written by
// someone else, each record is checked on its own: a bad datasource name,
// a line that is not an object, a token in proxy-token mode or a wrong row
// count dead-letters that record alone, with its own datasource, and tells
// its own waiting client; the records around it are delivered. A body that
// stops making sense part-way loses only its tail, and a malformed
// single-request message only itself.
func TestForgedGroupDeadLettersOnlyItsBadRecords(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := newBuffer()
	var dead deadLetters
	q := openQueue(t, ns, buf, Options{Stream: "FORGED", Subject: "forged", DeadLetter: dead.write})
	w, reply := waitFor(q)

	var body []byte
	body = appendRecord(body, buffer.Key{Datasource: "good"}, "", rows(`{"ok":1}`))
	body = appendRecord(body, buffer.Key{Datasource: "../x"}, "", rows(`{"bad":"name"}`))
	body = appendRecord(body, buffer.Key{Datasource: "notjson"}, reply, rows(`{"bad":"line"}`, `[1]`))
	body = appendRecord(body, buffer.Key{Datasource: "tok", Token: "a-token"}, "", rows(`{"bad":"token"}`))
	miscounted := appendRecord(nil, buffer.Key{Datasource: "count"}, "", rows(`{"bad":"count"}`))
	binary.BigEndian.PutUint32(miscounted[8:], 2) // says 2 rows, holds 1
	body = append(body, miscounted...)
	body = appendRecord(body, buffer.Key{Datasource: "good"}, "", rows(`{"ok":2}`))
	publishRaw(t, js, "forged.mixed-group", groupHeader(), body)

	torn := appendRecord(nil, buffer.Key{Datasource: "good"}, "", rows(`{"ok":3}`))
	torn = append(torn, appendRecord(nil, buffer.Key{Datasource: "cut"}, "", rows(`{"cut":1}`))[:recordHeader+2]...)
	publishRaw(t, js, "forged.good", groupHeader(), torn)

	publishRaw(t, js, "forged.x", nats.Header{hdrDatasource: []string{"../y"}}, []byte(`{"bad":"single"}`+"\n"))

	poll.Until(t, "3 rows buffered and 5 dead letters", func() bool { return buf.Len() == 3 && len(dead.list()) == 5 })
	got := bufferedRows(buf)
	if want := []string{`good {"ok":1}`, `good {"ok":2}`, `good {"ok":3}`}; !slices.Equal(got, want) {
		t.Errorf("buffered %q; want %q", got, want)
	}
	deadList := dead.list()
	slices.Sort(deadList)
	want := []string{
		"../x malformed: {\"bad\":\"name\"}\n",
		"../y malformed: {\"bad\":\"single\"}\n",
		"count malformed: {\"bad\":\"count\"}\n",
		"notjson malformed: {\"bad\":\"line\"}\n[1]\n",
		"tok malformed: {\"bad\":\"token\"}\n",
	}
	if !slices.Equal(deadList, want) {
		t.Errorf("dead letters:\n%q\nwant one per bad request, under its own datasource:\n%q", deadList, want)
	}
	if _, f := waitDone(t, w, "the bad record's client"); f == nil || f.Reason != reasonMalformed || f.Status != 500 {
		t.Errorf("the bad record's waiting client got %+v; want status 500, reason malformed", f)
	}
	wantCount(t, "dead_lettered{malformed}", q.m.deadLettered.WithLabelValues(reasonMalformed), 6)
	poll.Until(t, "all 3 messages answered and gone from the stream", func() bool { return streamMsgs(t, js, "FORGED") == 0 })
	wantCount(t, "acked", q.m.acked, 3)
}

// TestMaxDeliverDeadLettersEachRequestOfAGroup: a group on its
// QUEUE_MAX_DELIVER-th delivery is dead-lettered request by request, each
// under its own datasource with reason max_deliver, and a waiting client of
// one of them is told so.
func TestMaxDeliverDeadLettersEachRequestOfAGroup(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := newBuffer()
	var dead deadLetters
	q := open(t, ns, buf, Options{Stream: "MAXG", Subject: "maxg", MaxDeliver: 2, DeadLetter: dead.write})
	w, reply := waitFor(q)
	var body []byte
	body = appendRecord(body, buffer.Key{Datasource: "a"}, reply, rows(`{"a":1}`, `{"a":2}`))
	body = appendRecord(body, buffer.Key{Datasource: "b"}, "", rows(`{"b":1}`))
	body = appendRecord(body, buffer.Key{Datasource: "a"}, "", rows(`{"a":3}`))
	publishRaw(t, js, "maxg.mixed-group", groupHeader(), body)
	cons, err := js.Consumer(context.Background(), "MAXG", q.opts.Consumer)
	if err != nil {
		t.Fatal(err)
	}
	// One delivery that another replica gave up on.
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	runBridge(t, q)
	poll.Until(t, "3 dead letters", func() bool { return len(dead.list()) == 3 })
	got := dead.list()
	slices.Sort(got)
	want := []string{
		"a max_deliver: {\"a\":1}\n{\"a\":2}\n",
		"a max_deliver: {\"a\":3}\n",
		"b max_deliver: {\"b\":1}\n",
	}
	if !slices.Equal(got, want) {
		t.Errorf("dead letters %q; want one per request, under its own datasource: %q", got, want)
	}
	if _, f := waitDone(t, w, "max_deliver"); f == nil || f.Reason != reasonMaxDeliver || !strings.Contains(f.Message, "QUEUE_MAX_DELIVER") {
		t.Errorf("the waiting client got %+v; want reason max_deliver, QUEUE_MAX_DELIVER named", f)
	}
	if buf.Len() != 0 {
		t.Errorf("%d events buffered; want 0", buf.Len())
	}
	wantCount(t, "dead_lettered{max_deliver}", q.m.deadLettered.WithLabelValues(reasonMaxDeliver), 4)
	poll.Until(t, "the message terminated and gone from the stream", func() bool { return streamMsgs(t, js, "MAXG") == 0 })
}

// TestBothFormatsAreRead: a replica reads single-request messages (what
// versions before group commit published, NoGroupCommit) as well as
// groups, in pass-through mode: each request is buffered under its client's
// token, and its wait=true outcome reaches the replica that accepted it.
func TestBothFormatsAreRead(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	for i, single := range []bool{true, false} {
		stream, subject := fmt.Sprintf("FORMAT%d", i), fmt.Sprintf("format%d", i)
		opts := Options{Stream: stream, Subject: subject, ClientTokens: true}
		front := opts
		front.NoGroupCommit = single
		fq := open(t, ns, newBuffer(), front)
		key := buffer.Key{Datasource: "events", Token: "client-token"}
		w := buffer.NewWaiter()
		if err := fq.PutWaiting(key, rows(`{"a":1}`, `{"a":2}`), w); err != nil {
			t.Fatal(err)
		}
		s, err := js.Stream(context.Background(), stream)
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetMsg(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if isGroup := m.Header.Get(hdrBatch) != ""; isGroup == single || (m.Header.Get(hdrDatasource) == "events") != single {
			t.Fatalf("NoGroupCommit %v: published headers %v; want the single-request format: %v", single, m.Header, single)
		}
		if m.Subject != subject+".events" { // a group of one datasource goes to its subject
			t.Errorf("NoGroupCommit %v: published on %s; want %s.events", single, m.Subject, subject)
		}
		back := newBuffer()
		runBridge(t, open(t, ns, back, opts))
		poll.Until(t, "the rows buffered", func() bool { return back.Len() == 2 })
		e := back.Take(nil)
		if len(e) != 1 || e[0].Key != key || string(e[0].Data) != `{"a":1}`+"\n"+`{"a":2}`+"\n" {
			t.Fatalf("NoGroupCommit %v: buffered %+v; want the request under its token", single, e)
		}
		e[0].Waiter.AddPart()
		e[0].Waiter.Finish(2, 0, nil)
		back.Release(e[0].Key, e[0].Rows, e[0].Data)
		if ok, f := waitDone(t, w, "wait=true"); ok != 2 || f != nil {
			t.Errorf("NoGroupCommit %v: outcome %d rows, %+v; want 2 delivered", single, ok, f)
		}
		poll.Until(t, "the message acked", func() bool { return streamMsgs(t, js, stream) == 0 })
	}
}

// TestFullStreamFailsTheWholeGroup: a group the stream has no room for
// fails every one of its requests with buffer.ErrFull (429), none of them
// stored, each counted, and none left waiting for an outcome.
func TestFullStreamFailsTheWholeGroup(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	q := open(t, ns, newBuffer(), Options{Stream: "GFULL", Subject: "gfull", MaxBytes: 4096})
	line := []byte(`{"pad":"` + strings.Repeat("x", 1500) + `"}`) // 2 fit, the group of 6 does not
	const n = 6
	release := holdSlots(q)
	wait := burst(t, q, n, func(i int) error {
		var w *buffer.Waiter
		if i%2 == 0 {
			w = buffer.NewWaiter()
		}
		return q.PutWaiting(buffer.Key{Datasource: fmt.Sprint("ds", i%2)}, [][]byte{line}, w)
	})
	release()
	for i, err := range wait() {
		if !errors.Is(err, buffer.ErrFull) {
			t.Errorf("request %d: %v; want buffer.ErrFull", i, err)
		}
	}
	if got := streamMsgs(t, js, "GFULL"); got != 0 {
		t.Errorf("stream holds %d messages; want none of the refused group", got)
	}
	wantCount(t, "publishes{full}", q.m.publishes.WithLabelValues(resultFull), n)
	q.waits.mu.Lock()
	defer q.waits.mu.Unlock()
	if len(q.waits.m) != 0 {
		t.Errorf("%d wait=true entries kept for refused requests; want 0", len(q.waits.m))
	}
}

// TestLargeRequestIsPublishedAlone: a request above the group cap (but
// within max_payload) is not added to a group, and ends the one before it:
// it travels alone, and its neighbours are stored as well.
func TestLargeRequestIsPublishedAlone(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	q := open(t, ns, newBuffer(), Options{Stream: "ALONE", Subject: "alone"})
	big := []byte(`{"pad":"` + strings.Repeat("x", groupMaxBytes) + `"}`)
	release := holdSlots(q)
	put := func(l []byte) func() []error {
		return burst(t, q, 1, func(int) error { return q.PutWaiting(buffer.Key{Datasource: "ds"}, [][]byte{l}, nil) })
	}
	first, second := put([]byte(`{"a":1}`)), put(big) // the committer holds the second for the next group
	errs := make(chan error, 1)
	go func() { errs <- q.PutWaiting(buffer.Key{Datasource: "ds"}, rows(`{"a":2}`), nil) }()
	poll.Until(t, "the third request queued", func() bool { return len(q.in) == 1 })
	release()
	for i, err := range []error{first()[0], second()[0], <-errs} {
		if err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	if got := streamMsgs(t, js, "ALONE"); got != 3 {
		t.Errorf("stream holds %d messages; want 3: the large request alone, between the two others", got)
	}
}

// TestCloseWritesPublishesQueuedRequests: after CloseWrites new requests
// are refused (buffer.ErrClosed), and those already queued for a group are
// still published and answered; Close waits for them.
func TestCloseWritesPublishesQueuedRequests(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	q := open(t, ns, newBuffer(), Options{Stream: "SHUT", Subject: "shut"})
	release := holdSlots(q)
	wait := burst(t, q, 5, func(i int) error {
		return q.PutWaiting(buffer.Key{Datasource: "events"}, rows(fmt.Sprintf(`{"i":%d}`, i)), nil)
	})
	q.CloseWrites()
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"late":1}`), nil); !errors.Is(err, buffer.ErrClosed) {
		t.Errorf("a request after CloseWrites: %v; want buffer.ErrClosed", err)
	}
	release()
	for i, err := range wait() {
		if err != nil {
			t.Errorf("queued request %d: %v; want it published", i, err)
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if got := streamMsgs(t, js, "SHUT"); got != 1 {
		t.Errorf("stream holds %d messages; want the one group of the 5 queued requests", got)
	}
}

// TestGroupRequestsShareBufferEntries: the checked requests of a group for
// one key and with no waiting client go to the buffer as one entry; a
// wait=true request keeps an entry of its own, and no shared entry grows
// past what the buffer could ever hold, so none is refused as too large.
func TestGroupRequestsShareBufferEntries(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := buffer.New(buffer.Options{MaxEvents: 3, MaxBytes: 1 << 20})
	var dead deadLetters
	q := openQueue(t, ns, buf, Options{Stream: "SHARE", Subject: "share", DeadLetter: dead.write})
	w, reply := waitFor(q)
	var body []byte
	for i := range 4 {
		body = appendRecord(body, buffer.Key{Datasource: "a"}, "", rows(fmt.Sprintf(`{"a":%d}`, i)))
	}
	body = appendRecord(body, buffer.Key{Datasource: "b"}, "", rows(`{"b":0}`))
	body = appendRecord(body, buffer.Key{Datasource: "a"}, reply, rows(`{"wait":1}`))
	publishRaw(t, js, "share.mixed-group", groupHeader(), body)

	// The buffer holds 3 events: entries come in as the last ones leave.
	var entries []string
	for len(entries) < 4 {
		poll.Until(t, "an entry buffered", func() bool { return buf.Len() > 0 })
		for _, e := range buf.Take(nil) {
			entries = append(entries, fmt.Sprintf("%s %d", e.Key.Datasource, e.Rows))
			e.Waiter.AddPart()
			e.Waiter.Finish(e.Rows, 0, nil)
			buf.Release(e.Key, e.Rows, e.Data)
		}
	}
	slices.Sort(entries)
	if want := []string{"a 1", "a 1", "a 3", "b 1"}; !slices.Equal(entries, want) {
		t.Errorf("entries (datasource rows) %q; want %q: a's 4 requests in entries of at most 3 events, the wait=true one alone, b's own", entries, want)
	}
	if ok, f := waitDone(t, w, "wait=true"); ok != 1 || f != nil {
		t.Errorf("the wait=true request's outcome: %d rows, %+v; want its own 1 row", ok, f)
	}
	if got := dead.list(); len(got) != 0 {
		t.Errorf("dead letters %q; want none", got)
	}
	poll.Until(t, "the message acked", func() bool { return streamMsgs(t, js, "SHARE") == 0 })
	wantCount(t, "acked", q.m.acked, 1)
}

// TestDeniedTokenDeadLettersEachRequest: requests sharing an entry for a
// token upstream just refused are dead-lettered one by one, each its own
// record, as they would have been alone.
func TestDeniedTokenDeadLettersEachRequest(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := newBuffer()
	var dead deadLetters
	q := openQueue(t, ns, buf, Options{Stream: "DENY", Subject: "deny", ClientTokens: true, DeadLetter: dead.write})
	denied := buffer.Key{Datasource: "events", Token: "refused-token"}
	buf.Deny(denied, time.Now().Add(time.Hour))
	var body []byte
	body = appendRecord(body, denied, "", rows(`{"a":1}`))
	body = appendRecord(body, buffer.Key{Datasource: "events", Token: "good-token"}, "", rows(`{"ok":1}`))
	body = appendRecord(body, denied, "", rows(`{"a":2}`, `{"a":3}`))
	publishRaw(t, js, "deny.events", groupHeader(), body)
	poll.Until(t, "2 dead letters", func() bool { return len(dead.list()) == 2 })
	got := dead.list()
	slices.Sort(got)
	if want := []string{"events token_denied: {\"a\":1}\n", "events token_denied: {\"a\":2}\n{\"a\":3}\n"}; !slices.Equal(got, want) {
		t.Errorf("dead letters %q; want one per request: %q", got, want)
	}
	poll.Until(t, "the good request buffered", func() bool { return buf.Len() == 1 })
	if rows := bufferedRows(buf); !slices.Equal(rows, []string{`events {"ok":1}`}) {
		t.Errorf("buffered %q; want only the good token's row", rows)
	}
	poll.Until(t, "the message acked", func() bool { return streamMsgs(t, js, "DENY") == 0 })
	wantCount(t, "dead_lettered{token_denied}", q.m.deadLettered.WithLabelValues(reasonDenied), 3)
}

// TestRetainedGroupIsNakedOnce: a group whose entries this replica could
// not deliver before stopping (Retained) is naked once, whole, and
// JetStream hands all of it out again.
func TestRetainedGroupIsNakedOnce(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := newBuffer()
	q := openQueue(t, ns, buf, Options{Stream: "RETAIN", Subject: "retain"})
	var body []byte
	body = appendRecord(body, buffer.Key{Datasource: "a"}, "", rows(`{"a":1}`))
	body = appendRecord(body, buffer.Key{Datasource: "b"}, "", rows(`{"b":1}`))
	publishRaw(t, js, "retain.mixed-group", groupHeader(), body)
	poll.Until(t, "both entries buffered", func() bool { return buf.Len() == 2 })
	finish(buf, &buffer.Failure{Retained: true})
	poll.Until(t, "the group buffered again", func() bool { return buf.Len() == 2 })
	wantCount(t, "naked", q.m.naked, 1)
	wantCount(t, "redelivered", q.m.redelivered, 1)
	wantCount(t, "acked", q.m.acked, 0)
	if got := streamMsgs(t, js, "RETAIN"); got != 1 {
		t.Errorf("stream holds %d messages; want the 1 group, kept", got)
	}
}
