package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/ndjson"
)

// The backlog is the records on disk whose rows are not in the buffer:
// requests written while the buffer had no room for them (spilled), and,
// after a restart, every record an earlier run left owed. With a backlog,
// admission is bounded by the disk (MaxBytes), not by the buffer, so an
// upstream outage fills the disk instead of refusing clients within a
// minute. The feeder hands the backlog to the buffer as room appears: each
// stream (a datasource, and a token in pass-through mode) oldest first,
// streams in turn, so one datasource's backlog does not hold back another's
// fresh events. Memory holds counts per stream and segment, never the rows:
// a stream's next record is found by reading its segment on from where the
// last one was.

// stream is one key's records waiting on disk, by segment, oldest first.
// Spool.mu protects it.
type stream struct {
	key    buffer.Key
	segs   []streamSeg
	queued bool // in Spool.turns, or having its turn
}

type streamSeg struct {
	seg           *segment
	off           int64 // where its next waiting record is, or may be: no earlier one waits
	n             int   // the stream's records in seg waiting to be fed
	events, bytes int   // their rows, and the rows' bytes
}

// A stream's turn ends after feedQuantum bytes of rows or feedRecords
// records, if another stream is waiting.
const (
	feedQuantum = 64 << 10
	feedRecords = 64
)

// errDiskFull is the spool at MaxBytes; PutWaiting turns it into a
// buffer.FullError with a Retry-After.
var errDiskFull = errors.New("spool: full")

// addBacklogLocked counts the record of key at off in seg, written at
// (Unix nanoseconds), as waiting to be fed. Records are added in the order
// of their offsets.
func (s *Spool) addBacklogLocked(seg *segment, off int64, key buffer.Key, rows, size int, at int64) {
	st := s.streams[key]
	if st == nil {
		st = &stream{key: key}
		s.streams[key] = st
	}
	if !st.queued {
		st.queued = true
		s.turns = append(s.turns, st)
	}
	if n := len(st.segs); n == 0 || st.segs[n-1].seg != seg {
		// The stream's earlier records in seg, if any, were all fed: the
		// feeder must start at this one, not see those again.
		st.segs = append(st.segs, streamSeg{seg: seg, off: off})
	}
	last := &st.segs[len(st.segs)-1]
	last.n++
	last.events += rows
	last.bytes += size
	if seg.waiting == 0 || at < seg.firstAt {
		seg.firstAt = at
	}
	seg.waiting++
	if seg.old {
		s.oldWaiting++
	}
	s.backlogEvents += int64(rows)
	s.backlogBytes += int64(size)
	s.backlogRecords.Add(1)
	s.cond.Broadcast() // the feeder
}

// takeBacklogLocked uncounts n records of st in seg, of rows events and
// size bytes: fed, cancelled or lost.
func (s *Spool) takeBacklogLocked(st *stream, seg *segment, n, rows, size int) {
	for i := range st.segs {
		ss := &st.segs[i]
		if ss.seg != seg {
			continue
		}
		ss.n, ss.events, ss.bytes = ss.n-n, ss.events-rows, ss.bytes-size
		if ss.n <= 0 {
			st.segs = append(st.segs[:i], st.segs[i+1:]...)
		}
		break
	}
	seg.waiting -= n
	if seg.old {
		s.oldWaiting -= n
		s.fedOld += rows
	}
	s.cond.Broadcast() // Replay, CloseWrites
	s.backlogEvents -= int64(rows)
	s.backlogBytes -= int64(size)
	s.backlogRecords.Add(int64(-n))
	if len(st.segs) == 0 && !st.queued {
		delete(s.streams, st.key)
	}
}

// feed hands the backlog to the buffer until the spool closes or the
// buffer does (shutdown: what is left stays on disk for the next start).
func (s *Spool) feed(ctx context.Context) {
	var chunk []byte
	for {
		s.mu.Lock()
		for len(s.turns) == 0 && !s.closed {
			s.cond.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		st := s.turns[0]
		s.turns = append(s.turns[:0], s.turns[1:]...)
		s.mu.Unlock()

		moved, stop := s.feedTurn(ctx, st, &chunk)

		s.mu.Lock()
		if len(st.segs) > 0 {
			s.turns = append(s.turns, st)
		} else {
			st.queued = false
			delete(s.streams, st.key)
		}
		switch {
		case stop:
			s.cond.Broadcast() // Replay and CloseWrites wait no more for the feeder
		case !moved && !s.closed:
			// Its next record is not readable yet (FsyncAlways: not synced).
			s.cond.Wait()
		}
		s.mu.Unlock()
		if stop {
			return
		}
	}
}

// feedTurn hands up to feedQuantum bytes of st's next segment's records to
// the buffer, waiting for room. moved reports whether it got anywhere; stop
// that the feeder must end (ctx ended, the buffer closed).
func (s *Spool) feedTurn(ctx context.Context, st *stream, chunk *[]byte) (moved, stop bool) {
	s.mu.Lock()
	if len(st.segs) == 0 {
		s.mu.Unlock()
		return true, false
	}
	seg := st.segs[0].seg
	from, limit := st.segs[0].off, seg.size
	if seg == s.cur && s.opts.Fsync == FsyncAlways {
		limit = s.syncedSize // never hand over what a failed fsync may cancel
	}
	path, marker := seg.path, seg.marker
	s.mu.Unlock()
	if from >= limit {
		return false, false
	}
	f, err := os.Open(path)
	if err != nil {
		s.lost(st, seg, err)
		return true, false
	}
	defer f.Close()
	r := segReader{f: f, buf: (*chunk)[:0], limit: limit}
	defer func() { *chunk = r.buf[:0] }()
	// Every record below limit was counted when it was written, so the
	// stream's cursor may pass the others' records for good. It returns
	// whether the turn may go on: records of the stream are left in seg,
	// and its share is not used up while another stream waits.
	fed, records := 0, 0
	advance := func(to int64) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(st.segs) == 0 || st.segs[0].seg != seg {
			return false // none of its records left in seg
		}
		st.segs[0].off = to
		return len(s.turns) == 0 || (fed < feedQuantum && records < feedRecords)
	}
	for from < limit {
		payload, next, err := r.frame(from, marker)
		if err != nil {
			s.lost(st, seg, err)
			return true, false
		}
		rec, done, ok := decode(payload, from)
		if !ok || done != nil || !rec.is(st.key, seg) {
			from = next
			continue
		}
		ref := ref{seq: seg.seq, offset: from}
		s.mu.Lock()
		canceled := s.canceled[ref]
		delete(s.canceled, ref)
		w := s.waiting[ref]
		delete(s.waiting, ref)
		s.mu.Unlock()
		if canceled { // already uncounted
			from = next
			continue
		}
		if s.hand(ctx, seg, rec, w) {
			if w != nil {
				s.mu.Lock()
				s.waiting[ref] = w
				s.mu.Unlock()
			}
			advance(from)
			return true, true
		}
		s.mu.Lock()
		s.takeBacklogLocked(st, seg, 1, rec.rows, len(rec.data))
		s.mu.Unlock()
		fed += len(rec.data)
		records++
		from = next
		if !advance(from) {
			return true, false
		}
	}
	advance(from)
	return true, false
}

// is reports whether r is one of st's records waiting in seg: any owed
// data record of key in a segment an earlier run left, a spilled one in
// this run's.
func (r record) is(key buffer.Key, seg *segment) bool {
	if r.key != key {
		return false
	}
	if seg.old {
		return !seg.retired[r.offset]
	}
	return r.spilled
}

// hand puts rec into the buffer, waiting for room, with w (a waiting
// client's) or a Waiter of its own that retires the record once its rows
// are done. stop reports that the feeder must end: the record stays owed.
func (s *Spool) hand(ctx context.Context, seg *segment, rec record, w *buffer.Waiter) (stop bool) {
	lines, err := ndjson.Split(nil, rec.data)
	if err != nil {
		// Only a disk that changed under the spool: every record was
		// checked when written or recovered.
		s.m.corrupt.Inc()
		s.log.Error("spool record not replayed: it fails the checks a request passes", "path", seg.path,
			"offset", rec.offset, "events", rec.rows, "err", err)
		s.ack(seg, rec.offset)
		return false
	}
	if w == nil {
		w = buffer.NewWaiter()
	}
	off := rec.offset
	w.OnDone(func(f *buffer.Failure) {
		if f == nil || !f.Retained {
			s.ack(seg, off)
		}
	})
	switch err := s.buf.PutWait(ctx, rec.key, lines, w); {
	case err == nil:
		if seg.old {
			s.m.replayed.Add(float64(rec.rows))
		}
		return false
	case errors.Is(err, buffer.ErrDenied):
		// Upstream refused the token after the rows were accepted: they
		// are dropped as the flusher drops a refused batch's, with a reason.
		s.m.dropped.Add(float64(rec.rows))
		s.log.Error("spool rows dropped: upstream refused their token since they were accepted", "datasource", rec.key.Datasource,
			"events", rec.rows, "path", seg.path)
		w.AddPart()
		w.Finish(0, 0, &buffer.Failure{Status: 403, Message: "upstream refused the token", Reason: "unauthorized"})
		return false
	case errors.Is(err, buffer.ErrTooLarge):
		// A record an earlier run with a larger buffer wrote: it stays on
		// disk for a start with a buffer it fits.
		s.log.Error("spool record not replayed: larger than this buffer; it stays on disk", "path", seg.path, "events", rec.rows, "err", err)
		return false
	default: // ctx ended, or the buffer closed: shutting down
		return true
	}
}

// lost gives up on st's records in seg after a read failed: a file that
// vanished or changed under the spool. They are counted as corrupt and
// logged; the segment stays on disk (its records are still owed) for the
// next start, whose scan skips what is damaged and replays the rest.
func (s *Spool) lost(st *stream, seg *segment, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(st.segs) > 0 && st.segs[0].seg == seg {
		ss := st.segs[0]
		s.m.corrupt.Add(float64(ss.n))
		s.takeBacklogLocked(st, seg, ss.n, ss.events, ss.bytes)
	}
	s.log.Error("cannot read spooled records back; they stay on disk for the next start", "path", seg.path,
		"datasource", st.key.Datasource, "err", err)
}

// segReader reads records of one segment at increasing offsets through a
// window of the file, so skipping other streams' records costs no system
// call each. Bytes at or past limit are never read: they may be a write
// in progress.
type segReader struct {
	f     *os.File
	buf   []byte
	start int64 // file offset of buf[0]
	limit int64
}

const readWindow = 64 << 10

// frame returns the payload of the record at off and where the next one
// starts.
func (r *segReader) frame(off int64, marker []byte) ([]byte, int64, error) {
	fl := int64(len(marker) + 8)
	if err := r.fill(off, fl); err != nil {
		return nil, 0, err
	}
	rel := int(off - r.start)
	n := int64(binary.LittleEndian.Uint32(r.buf[rel+len(marker):]))
	if n > maxPayload {
		return nil, 0, fmt.Errorf("a record at offset %d claims %d bytes", off, n)
	}
	if err := r.fill(off, fl+n); err != nil {
		return nil, 0, err
	}
	rel = int(off - r.start)
	payload, next, ok := frameAt(r.buf, rel, marker)
	if !ok {
		return nil, 0, fmt.Errorf("the record at offset %d fails its checks", off)
	}
	return payload, r.start + int64(next), nil
}

// fill makes buf hold the n bytes at off, reading a window from off on.
func (r *segReader) fill(off, n int64) error {
	if off >= r.start && off+n <= r.start+int64(len(r.buf)) {
		return nil
	}
	if off+n > r.limit {
		return fmt.Errorf("a record at offset %d runs past the %d bytes written", off, r.limit)
	}
	want := min(max(n, readWindow), r.limit-off)
	if int64(cap(r.buf)) < want {
		r.buf = make([]byte, want)
	}
	r.buf = r.buf[:want]
	if _, err := r.f.ReadAt(r.buf, off); err != nil {
		r.buf = r.buf[:0]
		return err
	}
	r.start = off
	return nil
}

// backlogAge is how long the oldest record waiting on disk has waited, to
// the granularity of a segment: the age of the oldest segment still
// holding records waiting to be fed.
func (s *Spool) backlogAge() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	oldest := int64(0)
	for _, seg := range s.live {
		if seg.waiting > 0 && (oldest == 0 || seg.firstAt < oldest) {
			oldest = seg.firstAt
		}
	}
	if oldest == 0 {
		return 0
	}
	return max(time.Since(time.Unix(0, oldest)), 0)
}
