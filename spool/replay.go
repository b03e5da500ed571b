package spool

import (
	"context"
	"errors"
	"os"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/ndjson"
)

// Recover makes every record an earlier run left behind and did not retire
// part of the backlog, which the feeder hands to the buffer as room
// appears, oldest first per stream, before anything written after it; it
// does not wait for that (Replay does), so the proxy can serve at once,
// however much waits on disk. Torn tails are cut off and corrupt records
// skipped, both counted and logged; a segment of an unknown version is
// left untouched. It returns how many events it found owed. Call it once,
// before serving.
func (s *Spool) Recover() int {
	// First pass: check every segment, cut torn tails, and learn which
	// records were retired (done records may sit in later segments).
	retired := map[ref]bool{}
	var good []*segment
	for _, seg := range s.old {
		sc, ok := s.check(seg)
		if !ok {
			continue
		}
		for _, r := range sc.done {
			retired[r] = true
		}
		good = append(good, seg)
	}
	// Second pass: count what is still owed.
	events := 0
	for _, seg := range good {
		events += s.recoverSegment(seg, retired)
	}
	s.mu.Lock()
	s.old = nil
	s.mu.Unlock()
	return events
}

// Replay is Recover, then waits until the buffer took every event
// recovered (the flusher must be running to make room), or ctx ends, or
// the spool or the buffer closes. It returns how many events the buffer
// took, and ctx.Err() or buffer.ErrClosed if it stopped before all of
// them.
func (s *Spool) Replay(ctx context.Context) (int, error) {
	s.Recover()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waitLocked(ctx, func() bool { return s.oldWaiting == 0 || s.buf.Closed() })
	switch {
	case s.oldWaiting == 0:
		return s.fedOld, nil
	case ctx.Err() != nil:
		return s.fedOld, ctx.Err()
	}
	return s.fedOld, buffer.ErrClosed
}

// check scans seg, cuts a torn tail off, and counts corrupt records. False
// means the segment is not ours to replay (unreadable, or another version)
// and was left in place, logged and counted; the rest are still replayed.
func (s *Spool) check(seg *segment) (scanned, bool) {
	b, err := os.ReadFile(seg.path)
	var sc scanned
	if err == nil {
		sc, err = scan(b)
	}
	if err != nil {
		s.m.corrupt.Inc()
		s.log.Error("spool segment not replayed and left in place", "path", seg.path, "err", err)
		s.mu.Lock()
		s.total -= seg.size // not ours to count or delete
		s.mu.Unlock()
		return sc, false
	}
	if sc.corrupt > 0 {
		s.m.corrupt.Add(float64(sc.corrupt))
		s.log.Error("spool segment had corrupt records; they were skipped", "path", seg.path, "corrupt_records", sc.corrupt)
	}
	size := int64(len(b))
	if sc.validEnd < size {
		// Cut it off, so the done records appended later follow a whole
		// record; if that fails, the reader still finds them by the marker.
		if err := os.Truncate(seg.path, sc.validEnd); err != nil {
			s.log.Error("cannot cut the torn tail off a spool segment", "path", seg.path, "err", err)
		} else {
			s.log.Warn("spool segment ended in a torn record; cut it off", "path", seg.path, "bytes", size-sc.validEnd)
			size = sc.validEnd
		}
	}
	s.mu.Lock()
	s.total += size - seg.size
	seg.size = size
	seg.marker = sc.marker
	s.mu.Unlock()
	return sc, true
}

// recoverSegment counts seg's owed records in the backlog and returns their
// events. A record that fails the checks a request passes is retired at
// once, counted as corrupt and logged: no client could have sent it.
func (s *Spool) recoverSegment(seg *segment, retired map[ref]bool) int {
	b, err := os.ReadFile(seg.path)
	var sc scanned
	if err == nil {
		sc, err = scan(b)
	}
	if err != nil {
		s.m.corrupt.Inc()
		s.log.Error("spool segment changed before it was replayed; left in place", "path", seg.path, "err", err)
		return 0
	}
	var modTime int64
	if fi, err := os.Stat(seg.path); err == nil {
		modTime = fi.ModTime().UnixNano() // version 2 records carry no time
	}
	seg.old = true
	seg.retired = make(map[int64]bool)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live[seg.seq] = seg
	seg.pending = 1 // until every record is counted: an early ack must not delete it
	events := 0
	var lines [][]byte
	for _, r := range sc.records {
		if retired[ref{seq: seg.seq, offset: r.offset}] {
			seg.retired[r.offset] = true
			continue
		}
		var err error
		lines, err = ndjson.Split(lines[:0], r.data)
		switch {
		case err != nil:
		case !buffer.ValidDatasource(r.key.Datasource):
			err = errors.New("invalid datasource name")
		case r.key.Token != "" && !buffer.ValidToken(r.key.Token, buffer.MaxTokenLen):
			err = errors.New("invalid token")
		}
		if err != nil {
			s.m.corrupt.Inc()
			s.log.Error("spool record not replayed: it fails the checks a request passes", "path", seg.path,
				"offset", r.offset, "events", r.rows, "err", err)
			seg.retired[r.offset] = true
			seg.pending++
			s.ackLocked(seg, r.offset)
			continue
		}
		at := r.at
		if at == 0 {
			at = modTime
		}
		seg.pending++
		s.addBacklogLocked(seg, r.offset, r.key, r.rows, len(r.data), at)
		events += r.rows
	}
	if seg.pending--; seg.pending <= 0 {
		s.removeLocked(seg)
	}
	return events
}
