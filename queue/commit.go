package queue

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tbproxy/tbproxy/buffer"
)

// Group commit (issue #18). Each JetStream message costs the server a
// write and a PubAck whatever its size, so one-event requests published one
// message each left most of the proxy's speed unused. PutWaiting instead
// hands its request to the committer, one goroutine that gathers the
// requests arriving together into one group message and publishes it; the
// answerer answers every request of the group when its PubAck arrives. A
// request still gets nil only once the message holding it is stored.
const (
	// groupWindow bounds how long the committer keeps taking requests that
	// arrive back to back into a group before publishing it while it could.
	// A request arriving alone is published at once.
	groupWindow = time.Millisecond
	// groupMaxBytes caps a group's body, below the server's max_payload: a
	// larger request is published alone.
	groupMaxBytes = 256 << 10
	// groupsInFlight is how many groups may await their PubAck at once.
	// Requests arriving while that many are out join the next group: this
	// bound is what makes groups form under load. Two keep the server busy
	// while the committer fills the next; more only make smaller groups.
	groupsInFlight = 2
	// commitQueue is how many requests may wait for the committer to take
	// them; beyond it PutWaiting blocks.
	commitQueue = 1024
)

// pending is one request on its way into a group, then waiting for the
// group's PubAck. lines are the caller's: the committer copies them into
// the group's body while the caller waits.
type pending struct {
	key   buffer.Key
	lines [][]byte
	size  int        // its record's length in a group's body
	reply string     // hdrReply's value for a wait=true request, else ""
	done  chan error // buffered: the answerer never blocks on it
}

// group is the requests of one message.
type group struct {
	reqs []*pending
	body []byte
	ds   string // the datasource all its requests are for, or "" when mixed
	msg  *nats.Msg
	paf  jetstream.PubAckFuture
	err  error // publishing failed at once
}

func (g *group) add(p *pending) {
	if len(g.reqs) == 0 {
		g.ds = p.key.Datasource
	} else if g.ds != p.key.Datasource {
		g.ds = ""
	}
	g.reqs = append(g.reqs, p)
	g.body = appendRecord(g.body, p.key, p.reply, p.lines)
}

// newPending returns a pending request from the pool.
func (q *Queue) newPending() *pending {
	if p, ok := q.pendings.Get().(*pending); ok {
		return p
	}
	return &pending{done: make(chan error, 1)}
}

// newGroup returns an empty group from the pool.
func (q *Queue) newGroup() *group {
	if g, ok := q.groups.Get().(*group); ok {
		return g
	}
	msg := nats.NewMsg("")
	msg.Header.Set(hdrBatch, groupVersion)
	return &group{msg: msg}
}

// commitRequest queues p for the committer and returns the outcome of
// publishing the group that holds it: nil once stored.
func (q *Queue) commitRequest(p *pending) error {
	q.gate.RLock()
	if q.closed.Load() {
		q.gate.RUnlock()
		return buffer.ErrClosed
	}
	q.in <- p
	q.gate.RUnlock()
	return <-p.done
}

// commit is the committer: it gathers the requests PutWaiting queues into
// groups and publishes each as one message. It returns once Close closed
// the queue of requests and the last group was published.
func (q *Queue) commit() {
	defer close(q.sent)
	var next *pending // the request that did not fit in the last group
	for {
		if next == nil {
			var ok bool
			if next, ok = <-q.in; !ok {
				return
			}
		}
		g := q.newGroup()
		g.add(next)
		next = q.fill(g)
		q.publishGroup(g)
	}
}

// fill adds requests to g until it is to be published: when nothing more
// is waiting, or after groupWindow, and a slot in flight is free; or when
// the next request would take g past its cap. It returns with a slot
// taken, and the request that did not fit, if one did not.
func (q *Queue) fill(g *group) (next *pending) {
	limit := min(groupMaxBytes, int(q.nc.MaxPayload())-messageOverhead)
	deadline := time.Now().Add(groupWindow)
	for {
		var p *pending
		var ok bool
		select {
		case p, ok = <-q.in: // already waiting
		default:
			// Nothing waiting: publish as soon as a slot is free, and take
			// what arrives until then.
			select {
			case q.slots <- struct{}{}:
				return nil
			case p, ok = <-q.in:
			}
		}
		switch {
		case !ok: // Close: publish what there is
			q.slots <- struct{}{}
			return nil
		case len(g.body)+p.size > limit:
			q.slots <- struct{}{}
			return p
		}
		g.add(p)
		if time.Now().After(deadline) {
			select {
			case q.slots <- struct{}{}:
				return nil
			default: // every slot taken: g can only grow meanwhile
			}
		}
	}
}

// publishGroup publishes g, holding a slot, and hands it to the answerer.
func (q *Queue) publishGroup(g *group) {
	token := mixedSubject
	if g.ds != "" {
		token = g.ds
	}
	g.msg.Subject = q.opts.Subject + "." + token
	g.msg.Data = g.body
	g.paf, g.err = q.js.PublishMsgAsync(g.msg)
	q.sent <- g // never blocks: it holds as many as there are slots
}

// answer is the answerer: it waits for each group's PubAck, in the order
// they were published (the order JetStream answers in), frees its slot,
// and tells every request of the group the outcome.
func (q *Queue) answer() {
	for g := range q.sent {
		err, settled := g.err, true
		if err == nil {
			err, settled = q.awaitPubAck(g.paf)
		}
		<-q.slots
		if err != nil {
			err = q.publishError(err, len(g.reqs))
		}
		for _, p := range g.reqs {
			p.done <- err
		}
		if settled { // else the client may still publish its message: not reused
			clear(g.reqs)
			g.reqs, g.body, g.paf, g.err = g.reqs[:0], g.body[:0], nil, nil
			if cap(g.body) > 2*groupMaxBytes { // a large request's, alone: not kept
				g.body = nil
			}
			q.groups.Put(g)
		}
	}
}

// awaitPubAck waits for paf's outcome; settled is false when it is still
// unknown: the client's own PubAck timeout (PublishTimeout) should have
// given one first.
func (q *Queue) awaitPubAck(paf jetstream.PubAckFuture) (err error, settled bool) {
	t := time.NewTimer(q.opts.PublishTimeout + time.Second)
	defer t.Stop()
	select {
	case <-paf.Ok():
		return nil, true
	case err := <-paf.Err():
		return err, true
	case <-t.C:
		return errors.New("timed out waiting for the stream's acknowledgement"), false
	}
}

// stopCommitter refuses new requests, lets the committer publish what is
// queued, and waits until every group was answered.
func (q *Queue) stopCommitter() {
	q.closed.Store(true)
	q.gate.Lock()
	if q.in != nil && !q.inClosed { // nil: NoGroupCommit
		q.inClosed = true
		close(q.in)
	}
	q.gate.Unlock()
	q.committing.Wait()
}
