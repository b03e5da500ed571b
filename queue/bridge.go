package queue

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/clock"
	"github.com/tbproxy/tbproxy/internal/ndjson"
)

// bridgeFill is the buffer fill below which the bridge fetches more: it
// keeps room for the messages in flight and stays clear of the proxy's
// readiness high-water mark (0.9 by default).
const bridgeFill = 0.5

// fetchBatch is the most messages asked for in one pull request, and
// fetchWait the longest one stays open.
const (
	fetchBatch = 256
	fetchWait  = time.Second
)

// Run is the bridge: it fetches messages from the shared consumer while the
// local buffer has room and puts each in the buffer, until ctx ends. Call it
// once; it blocks. Messages fetched but not yet in the buffer when ctx ends
// are naked for another replica. Messages already in the buffer are acked or
// naked as the flusher finishes them, so Close must come after the
// flusher's Run returned.
func (q *Queue) Run(ctx context.Context) error {
	failures := 0
	for ctx.Err() == nil {
		if q.buf.WaitRoom(ctx, bridgeFill) != nil { // room appears as the flusher delivers
			break
		}
		batch, err := q.cons.Fetch(fetchBatch, jetstream.FetchMaxWait(fetchWait))
		if err == nil {
			for msg := range batch.Messages() {
				q.take(ctx, msg)
			}
			err = batch.Error()
		}
		if err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			failures++
			if failures == 1 || failures&(failures-1) == 0 { // 1, 2, 4, 8, …
				q.log.Warn("fetching from the queue failed", "err", err, "failures", failures)
			}
			if !clock.Sleep(ctx, min(time.Duration(failures)*100*time.Millisecond, 2*time.Second)) {
				break
			}
			continue
		}
		failures = 0
	}
	return nil
}

// take puts each request of one message in the buffer, or dead-letters it;
// or naks the message.
func (q *Queue) take(ctx context.Context, msg jetstream.Msg) {
	q.m.fetched.Inc()
	md, err := msg.Metadata()
	if err == nil && md.NumDelivered > 1 {
		q.m.redelivered.Inc()
	}
	// Redelivery and QUEUE_MAX_DELIVER count messages; on a message's last
	// delivery each of its requests is dead-lettered on its own.
	lastTry := ""
	if err == nil && md.NumDelivered >= uint64(q.opts.MaxDeliver) {
		lastTry = fmt.Sprintf("delivered %d times without being acknowledged upstream (QUEUE_MAX_DELIVER)", md.NumDelivered)
	}
	m := &fetched{q: q, msg: msg}
	m.left.Store(1) // for this function: no answer before every request had its turn
	q.held.add(msg)
	var shared []entry
	for _, r := range unpack(msg) {
		lines, ok := q.check(r, lastTry)
		switch {
		case !ok: // dead-lettered
		case r.reply != "": // its own entry, for its own outcome
			if !q.put(ctx, m, entry{key: r.key, lines: lines, size: len(r.data), data: [][]byte{r.data}, reply: r.reply}) {
				return // handed back: another replica gets the whole message
			}
		default:
			shared = q.share(shared, r, lines)
		}
	}
	for _, e := range shared {
		if !q.put(ctx, m, e) {
			return
		}
	}
	m.done()
}

// check returns the lines of r, or dead-letters it, on its own: a request
// the proxy could not have published, or one on its message's last
// delivery (lastTry says why, else "").
func (q *Queue) check(r request, lastTry string) (lines [][]byte, ok bool) {
	why, reason := r.bad, reasonMalformed
	if why == "" {
		why = q.malformed(r.key)
	}
	if why == "" {
		// Anyone who can publish on the subject can write here: every
		// line is checked as a client's would be, so one forged line
		// cannot get a whole batch of other rows refused upstream.
		var err error
		lines, err = ndjson.Split(make([][]byte, 0, countRows(r.data)), r.data) // not r.rows: anyone could write it
		switch {
		case err != nil:
			why = "not a tbproxy request: " + err.Error()
		case r.rows >= 0 && r.rows != len(lines):
			why = fmt.Sprintf("not a tbproxy request: its record says %d rows and holds %d", r.rows, len(lines))
		case lastTry != "":
			why, reason = lastTry, reasonMaxDeliver
		}
	}
	if why != "" {
		q.deadLetter(r.key, r.data, r.reply, reason, why)
		return nil, false
	}
	return lines, true
}

// entry is what one buffer entry holds: one request, or several checked
// requests of one key and no waiting client. The flusher batches those
// together anyway, and sharing an entry costs the buffer, the flusher and
// the message's count of entries once instead of per request, which is
// most of what a one-event request costs the bridge.
type entry struct {
	key   buffer.Key
	lines [][]byte
	size  int      // buffer.Size(lines): the length of its requests' data
	data  [][]byte // each request's NDJSON, to dead-letter each on its own
	reply string   // a single wait=true request's hdrReply
}

// share adds r, whose lines were checked, to the entry of its key, or
// starts one. An entry never grows past what the buffer could ever hold,
// so the buffer never refuses as too large what it would take request by
// request.
func (q *Queue) share(shared []entry, r request, lines [][]byte) []entry {
	size := len(r.data) // each line and its '\n'
	for i := range shared {
		e := &shared[i]
		if e.key == r.key && !errors.Is(q.buf.Admits(e.key, len(e.lines)+len(lines), e.size+size), buffer.ErrTooLarge) {
			e.lines = append(e.lines, lines...)
			e.size += size
			e.data = append(e.data, r.data)
			return shared
		}
	}
	return append(shared, entry{key: r.key, lines: lines, size: size, data: [][]byte{r.data}})
}

// put puts e in the buffer, or dead-letters its requests, each on its
// own, if the buffer refuses it for good. It returns false when this
// replica is stopping and handed m back.
func (q *Queue) put(ctx context.Context, m *fetched, e entry) bool {
	m.left.Add(1) // before the entry is in the buffer: the flusher may finish it at once
	w := buffer.NewWaiter()
	reply := e.reply
	w.OnDone(func(f *buffer.Failure) {
		if f != nil && f.Retained { // this replica stopped first: another one delivers it
			m.handBack(0)
			return
		}
		// Delivered, or dropped with a reason (and dead-lettered) by the
		// flusher. Reported unless the message was handed back: then
		// the replica that takes it reports.
		if reply != "" && q.held.has(m.msg) {
			s, qr, _ := w.Result()
			q.report(reply, s, qr, f)
		}
		m.done()
	})
	reason, why := "", ""
	switch err := q.buf.PutWait(ctx, e.key, e.lines, w); {
	case err == nil:
		m.buffered.Store(true)
		return true
	case errors.Is(err, buffer.ErrTooLarge): // only ever a single request (share)
		reason, why = reasonTooLarge, "larger than this replica's whole buffer (BUFFER_SIZE, BUFFER_MAX_BYTES)"
	case errors.Is(err, buffer.ErrDenied):
		reason, why = reasonDenied, "upstream refused this token (403) moments ago"
	default: // buffer.ErrClosed, or ctx ended while the buffer was full
		// This replica is stopping, and its pull request may still be
		// open: a plain nak would come straight back into it, again and
		// again, until QUEUE_MAX_DELIVER dead-letters the rows. Delayed
		// past the pull's end, it goes to another replica.
		m.handBack(fetchWait)
		return false
	}
	for _, data := range e.data {
		q.deadLetter(e.key, data, e.reply, reason, why)
	}
	m.done()
	return true
}

// fetched is a message whose requests are being delivered. Only the first
// of its answers counts, and only if Close has not naked it already
// (held.remove): an ack once every entry is done, or a nak as soon as one
// is handed back.
type fetched struct {
	q        *Queue
	msg      jetstream.Msg
	left     atomic.Int32 // buffer entries not done yet, and 1 while take runs
	buffered atomic.Bool  // an entry went to the buffer; else every request was dead-lettered
}

// done counts one entry delivered, dropped or dead-lettered; the last acks
// the message, or terminates it when every request was dead-lettered.
func (m *fetched) done() {
	if m.left.Add(-1) != 0 || !m.q.held.remove(m.msg) {
		return
	}
	if m.buffered.Load() {
		_ = m.msg.Ack()
	} else {
		_ = m.msg.Term()
	}
	m.q.m.acked.Inc()
}

// handBack naks the message, after delay if not 0, for another replica;
// its entries this replica already delivered are delivered again there.
func (m *fetched) handBack(delay time.Duration) {
	if !m.q.held.remove(m.msg) {
		return
	}
	if delay > 0 {
		_ = m.msg.NakWithDelay(delay)
	} else {
		_ = m.msg.Nak()
	}
	m.q.m.naked.Inc()
}

// malformed says what makes key one the proxy never publishes, or "": a
// datasource name or token a client could not have sent, or a token where
// this mode has none (or none where it needs one).
func (q *Queue) malformed(key buffer.Key) string {
	switch {
	case !buffer.ValidDatasource(key.Datasource):
		return "not a tbproxy request: invalid datasource name"
	case q.opts.ClientTokens && !buffer.ValidToken(key.Token, buffer.MaxTokenLen):
		return "not a tbproxy request: no valid client token (pass-through mode)"
	case !q.opts.ClientTokens && key.Token != "":
		return "not a tbproxy request: a client token in proxy-token mode"
	}
	return ""
}

// deadLetter gives up on one request: logged, counted, written to the
// dead-letter directory if there is one, and reported to a waiting client.
// Its message is answered with the others' (fetched).
func (q *Queue) deadLetter(key buffer.Key, data []byte, reply, reason, why string) {
	rows := countRows(data)
	f := &buffer.Failure{Status: 500, Reason: reason, Message: "tbproxy queue: " + why + "; the rows were dead-lettered"}
	file := ""
	if q.opts.DeadLetter != nil && key.Datasource != "" && rows > 0 {
		file = q.opts.DeadLetter(key, data, rows, f)
	}
	q.m.deadLettered.WithLabelValues(reason).Add(float64(rows))
	q.log.Error("queue message dead-lettered", "datasource", key.Datasource, "events", rows, "reason", reason,
		"why", why, "dead_letter_file", file)
	if reply != "" {
		q.report(reply, 0, 0, f)
	}
}
