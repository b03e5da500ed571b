package queue

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tbproxy/tbproxy/buffer"
)

// PutIdempotent is PutWaiting for a request with an Idempotency-Key: it is
// published as a message of its own (never grouped: a duplicate is judged
// per message) with id as its Nats-Msg-Id, and JetStream stores it at most
// once within the stream's duplicate window (Options.Duplicates,
// IDEMPOTENCY_WINDOW), whichever replica publishes it. duplicate reports a
// message the stream already held: nothing was stored now, and w will
// never be told anything. id must be printable ASCII (the proxy sends hex).
func (q *Queue) PutIdempotent(key buffer.Key, lines [][]byte, w *buffer.Waiter, id string) (duplicate bool, err error) {
	if len(lines) == 0 {
		return false, nil
	}
	if q.closed.Load() {
		return false, buffer.ErrClosed
	}
	if !q.nc.IsConnected() {
		q.m.publishes.WithLabelValues(resultError).Inc()
		return false, fmt.Errorf("%w: not connected to NATS", buffer.ErrStorage)
	}
	size := buffer.Size(lines)
	if mp := q.nc.MaxPayload(); int64(size+len(key.Token)+len(id))+messageOverhead > mp {
		q.m.publishes.WithLabelValues(resultTooLarge).Inc()
		return false, &buffer.TooLargeError{Limit: fmt.Sprintf("the queue's message limit (nats-server max_payload, %d bytes)", mp)}
	}
	var reply, waitID string
	if w != nil {
		w.AddPart()
		waitID = q.waits.add(w, time.Now().Add(q.opts.WaitTimeout+5*time.Second))
		reply = q.procID + "." + waitID
	}
	start := time.Now()
	duplicate, err = q.publishKeyed(key, lines, size, reply, id)
	q.m.publishDuration.Observe(time.Since(start).Seconds())
	if err != nil || duplicate {
		if waitID != "" {
			q.waits.take(waitID)
		}
		return duplicate, err
	}
	q.m.published.Inc()
	return false, nil
}

// publishKeyed publishes one request in the single-request format with
// Nats-Msg-Id set, and reports whether the stream called it a duplicate.
func (q *Queue) publishKeyed(key buffer.Key, lines [][]byte, size int, reply, id string) (bool, error) {
	msg := q.singleMessage(key, lines, size, reply)
	msg.Header.Set(jetstream.MsgIDHeader, id)
	paf, err := q.js.PublishMsgAsync(msg)
	if err != nil {
		return false, q.publishError(err, 1)
	}
	t := time.NewTimer(q.opts.PublishTimeout + time.Second)
	defer t.Stop()
	select {
	case ack := <-paf.Ok():
		if ack.Duplicate {
			q.m.duplicates.Inc()
		}
		return ack.Duplicate, nil
	case err = <-paf.Err():
	case <-t.C:
		err = errors.New("timed out waiting for the stream's acknowledgement")
	}
	return false, q.publishError(err, 1)
}

// Broadcast publishes data on topic to every replica's Listen, over the
// queue's connection, at most once (core NATS, not the stream): what
// replicas share besides events, such as the rate limiters' counts. Its
// subject, <QUEUE_SUBJECT>.share.<topic>, has one token too many for the
// stream's <QUEUE_SUBJECT>.* to store it.
func (q *Queue) Broadcast(topic string, data []byte) error {
	return q.nc.Publish(q.opts.Subject+".share."+topic, data)
}

// Listen calls f with every message Broadcast on topic, this replica's
// own included, on one goroutine of the connection's, until Close. It
// returns once the server holds the subscription, so a broadcast made after
// it returns, by any replica, is heard; if the connection is down just then,
// the subscription is made on reconnect.
func (q *Queue) Listen(topic string, f func(data []byte)) error {
	if _, err := q.nc.Subscribe(q.opts.Subject+".share."+topic, func(m *nats.Msg) { f(m.Data) }); err != nil {
		return err
	}
	if err := q.nc.Flush(); errors.Is(err, nats.ErrConnectionClosed) {
		return err
	}
	return nil
}
