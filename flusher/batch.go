package flusher

import (
	"bytes"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/upstream"
)

// batch is a group of events for one key that is sent upstream in one
// request: the upstream.Batch an upstream reads, and, beside each of its
// Parts, whose rows the part holds. The flusher's own slices are kept in
// step with Parts by add, split and merge, so a send hands upstream
// &b.Batch and builds nothing.
//
// A batch is owned by one goroutine at a time: the flusher's loop while it
// grows, then the goroutine delivering it. Upstreams only read it.
type batch struct {
	upstream.Batch
	pieces []piece // pieces[i] says whose rows Parts[i] holds
	// sent says an upload of this batch was started: if it was never
	// acknowledged, upstream may still have written it.
	sent bool
}

// piece describes one of a batch's Parts: how many lines it holds, and the
// waiting client (if any) whose rows they are.
type piece struct {
	rows int
	w    *buffer.Waiter
}

func newBatch(k buffer.Key, first int64) *batch {
	return &batch{Batch: upstream.Batch{Key: k, First: first}}
}

// add appends rows lines of data. A waiter is told to expect one more piece.
func (b *batch) add(data []byte, rows int, accepted int64, w *buffer.Waiter) {
	if b.Rows == 0 || accepted < b.First {
		b.First = accepted
	}
	if w != nil {
		w.AddPart()
	}
	b.push(data, piece{rows: rows, w: w})
}

// push appends a part and its piece, and counts them.
func (b *batch) push(data []byte, p piece) {
	b.Parts = append(b.Parts, data)
	b.pieces = append(b.pieces, p)
	b.Rows += p.rows
	b.Bytes += len(data)
}

// split cuts a batch of two or more rows into two with about half the rows
// each, at a line boundary. A piece of a waiting request that straddles the
// cut becomes two pieces. b must not be used afterwards.
func (b *batch) split() (*batch, *batch) {
	first, second := newBatch(b.Key, b.First), newBatch(b.Key, b.First)
	want := b.Rows / 2
	for i, data := range b.Parts {
		p := b.pieces[i]
		switch room := want - first.Rows; {
		case room >= p.rows:
			first.push(data, p)
		case room <= 0:
			second.push(data, p)
		default:
			n, rows := cutLines(data, room, len(data))
			first.push(data[:n:n], piece{rows: rows, w: p.w})
			if p.w != nil {
				p.w.AddPart() // the same request now finishes in two pieces
			}
			second.push(data[n:], piece{rows: p.rows - rows, w: p.w})
		}
	}
	return first, second
}

// merge appends c's parts to b; c must not be used afterwards.
func (b *batch) merge(c *batch) {
	b.Parts = append(b.Parts, c.Parts...)
	b.pieces = append(b.pieces, c.pieces...)
	b.Rows += c.Rows
	b.Bytes += c.Bytes
	b.First = min(b.First, c.First)
}

// finishWaiters tells every waiting client in the batch its outcome. A
// batch's quarantined rows cannot be traced to the requests they came from,
// so they are shared out in proportion to each piece's rows, by cumulative
// rounding so the shares add up exactly to upstream's count; the rest of a
// piece's rows are successful. If upstream counted fewer rows than were
// sent (a short ack), successful rows are shared out the same way.
func (b *batch) finishWaiters(res upstream.Result, f *buffer.Failure) {
	short := res.SuccessfulRows+res.QuarantinedRows < b.Rows
	var rows, doneS, doneQ int
	for _, p := range b.pieces {
		rows += p.rows
		upToQ := rows * res.QuarantinedRows / b.Rows
		q := upToQ - doneQ
		doneQ = upToQ
		s := p.rows - q
		if short {
			upToS := rows * res.SuccessfulRows / b.Rows
			s = min(upToS-doneS, p.rows-q)
			doneS = upToS
		}
		switch {
		case p.w == nil:
		case f != nil:
			p.w.Finish(0, 0, f)
		default:
			p.w.Finish(s, q, nil)
		}
	}
}

// policy decides when a growing batch is sent: when it holds rows events or
// bytes of NDJSON, or interval after its first event arrived, whichever comes
// first (Benthos-style batch policy as a pure value, so it is table-testable).
type policy struct {
	rows, bytes int
	interval    time.Duration
}

// room returns how many more events and bytes a batch may take.
func (p policy) room(b *batch) (rows, bytes int) {
	return p.rows - b.Rows, p.bytes - b.Bytes
}

// full reports whether b must be sent now, whatever its age.
func (p policy) full(b *batch) bool {
	return b.Rows >= p.rows || b.Bytes >= p.bytes
}

// due reports whether a batch opened at opened must be sent at now.
func (p policy) due(opened, now time.Time) bool {
	return !now.Before(opened.Add(p.interval))
}

// cutLines returns how much of data, a run of '\n'-terminated lines, fits in
// maxRows lines and maxBytes bytes: the length of the longest prefix of whole
// lines within both limits, and how many lines that is.
func cutLines(data []byte, maxRows, maxBytes int) (n, rows int) {
	for rows < maxRows {
		i := bytes.IndexByte(data[n:], '\n')
		if i < 0 || n+i+1 > maxBytes {
			break
		}
		n += i + 1
		rows++
	}
	return n, rows
}

// stream is the flusher's state for one key: the batch that is growing, the
// full batches waiting their turn, and the one batch in flight. One batch in
// flight per key keeps a failing datasource from taking more than its share
// of upstream slots and keeps each key's rows in order; different keys are
// sent in parallel. Owned by the flusher's loop goroutine.
type stream struct {
	key       buffer.Key
	open      *batch
	openedAt  time.Time
	ready     []*batch
	inflight  *batch
	runnable  bool      // listed in Flusher.runnable
	holdUntil time.Time // upstream's rate limit is spent until then; zero if not
}

// add appends an entry's rows to the stream, sealing batches as they fill.
// An entry larger than a batch is cut at line boundaries; a single line
// larger than a whole batch is sent alone.
func (s *stream) add(e buffer.Entry, p policy, now time.Time) {
	data, rows := e.Data, e.Rows
	for rows > 0 {
		if s.open == nil {
			s.open = newBatch(s.key, 0)
			s.openedAt = now
		}
		roomRows, roomBytes := p.room(s.open)
		if rows <= roomRows && len(data) <= roomBytes {
			s.open.add(data, rows, e.Accepted, e.Waiter)
			rows = 0
		} else {
			n, r := cutLines(data, roomRows, roomBytes)
			if r == 0 && s.open.Rows > 0 {
				s.seal()
				continue
			}
			if r == 0 { // one line larger than a whole batch
				n = bytes.IndexByte(data, '\n') + 1
				if n == 0 {
					n = len(data)
				}
				r = 1
			}
			s.open.add(data[:n:n], r, e.Accepted, e.Waiter)
			data, rows = data[n:], rows-r
		}
		if p.full(s.open) {
			s.seal()
		}
	}
}

// seal moves the growing batch, if any, to the ready queue.
func (s *stream) seal() {
	if s.open != nil && s.open.Rows > 0 {
		s.ready = append(s.ready, s.open)
	}
	s.open = nil
}

// next removes and returns the batch to send now, or nil.
// A backlog (batches sealed by the interval while upstream was slow or
// down) is merged into as few requests as the policy's limits allow, so a
// stream catches up in large requests instead of one interval's worth at a
// time.
func (s *stream) next(p policy) *batch {
	if s.inflight != nil || len(s.ready) == 0 {
		return nil
	}
	b := s.ready[0]
	n := 1
	for ; n < len(s.ready); n++ {
		c := s.ready[n]
		if b.Rows+c.Rows > p.rows || b.Bytes+c.Bytes > p.bytes {
			break
		}
		b.merge(c)
	}
	clear(s.ready[:n])
	s.ready = s.ready[n:]
	s.inflight = b
	return b
}

func (s *stream) idle() bool {
	return s.open == nil && len(s.ready) == 0 && s.inflight == nil && s.holdUntil.IsZero()
}

// oldest returns the Accepted time of the oldest event the stream holds.
func (s *stream) oldest() (int64, bool) {
	switch {
	case s.inflight != nil:
		return s.inflight.First, true
	case len(s.ready) > 0:
		return s.ready[0].First, true
	case s.open != nil:
		return s.open.First, true
	}
	return 0, false
}
