package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// take puts one message in the buffer, or dead-letters it, or naks it.
func (q *Queue) take(ctx context.Context, msg jetstream.Msg) {
	q.m.fetched.Inc()
	md, err := msg.Metadata()
	if err == nil && md.NumDelivered > 1 {
		q.m.redelivered.Inc()
	}
	h := msg.Headers()
	key := buffer.Key{Datasource: h.Get(hdrDatasource), Token: h.Get(hdrToken)}
	reply := h.Get(hdrReply)
	data := msg.Data()
	rows := bytes.Count(data, []byte{'\n'})
	if why := q.malformed(key); why != "" {
		q.terminate(msg, key, data, rows, reply, reasonMalformed, why)
		return
	}
	// Anyone who can publish on the subject can write here: every line is
	// checked as a client's would be, so one forged line cannot get a whole
	// batch of other rows refused upstream.
	lines, serr := ndjson.Split(make([][]byte, 0, rows), data)
	switch {
	case serr != nil:
		q.terminate(msg, key, data, rows, reply, reasonMalformed, "not a tbproxy request: "+serr.Error())
		return
	case err == nil && md.NumDelivered >= uint64(q.opts.MaxDeliver):
		q.terminate(msg, key, data, rows, reply, reasonMaxDeliver,
			fmt.Sprintf("delivered %d times without being acknowledged upstream (QUEUE_MAX_DELIVER)", md.NumDelivered))
		return
	}

	w := buffer.NewWaiter()
	w.OnDone(func(f *buffer.Failure) {
		if !q.held.remove(msg) {
			return // Close naked it already
		}
		if f != nil && f.Retained { // this replica stopped first: another one delivers it
			_ = msg.Nak()
			q.m.naked.Inc()
			return
		}
		// Delivered, or dropped with a reason (and dead-lettered) by the flusher.
		_ = msg.Ack()
		q.m.acked.Inc()
		if reply != "" {
			s, qr, _ := w.Result()
			q.report(reply, s, qr, f)
		}
	})
	q.held.add(msg)
	switch err := q.buf.PutWait(ctx, key, lines, w); {
	case err == nil:
	case errors.Is(err, buffer.ErrTooLarge):
		q.held.remove(msg)
		q.terminate(msg, key, msg.Data(), rows, reply, reasonTooLarge, "larger than this replica's whole buffer (BUFFER_SIZE, BUFFER_MAX_BYTES)")
	case errors.Is(err, buffer.ErrDenied):
		q.held.remove(msg)
		q.terminate(msg, key, msg.Data(), rows, reply, reasonDenied, "upstream refused this token (403) moments ago")
	default: // buffer.ErrClosed, or ctx ended while the buffer was full
		// This replica is stopping, and its pull request may still be
		// open: a plain nak would come straight back into it, again and
		// again, until QUEUE_MAX_DELIVER dead-letters the rows. Delayed
		// past the pull's end, it goes to another replica.
		if q.held.remove(msg) {
			_ = msg.NakWithDelay(fetchWait)
			q.m.naked.Inc()
		}
	}
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

// terminate stops JetStream redelivering msg: logged, counted, written to
// the dead-letter directory if there is one, and reported to a waiting
// client.
func (q *Queue) terminate(msg jetstream.Msg, key buffer.Key, data []byte, rows int, reply, reason, why string) {
	f := &buffer.Failure{Status: 500, Reason: reason, Message: "tbproxy queue: " + why + "; the rows were dead-lettered"}
	file := ""
	if q.opts.DeadLetter != nil && key.Datasource != "" && rows > 0 {
		file = q.opts.DeadLetter(key, data, rows, f)
	}
	q.m.deadLettered.WithLabelValues(reason).Add(float64(rows))
	q.log.Error("queue message dead-lettered", "datasource", key.Datasource, "events", rows, "reason", reason,
		"why", why, "dead_letter_file", file)
	_ = msg.Term()
	q.m.acked.Inc()
	if reply != "" {
		q.report(reply, 0, 0, f)
	}
}
