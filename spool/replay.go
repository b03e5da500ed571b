package spool

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/ndjson"
)

// Replay puts every record an earlier run left behind and did not retire
// into the buffer, oldest first, waiting for room when the buffer is full
// (the flusher must be running). Torn tails are cut off and corrupt records
// skipped, both counted and logged; a segment of an unknown version is left
// untouched. It returns how many events were replayed.
func (s *Spool) Replay(ctx context.Context) (int, error) {
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
	// Second pass: hand over what is still owed.
	events := 0
	for _, seg := range good {
		n, err := s.replaySegment(ctx, seg, retired)
		events += n
		if err != nil {
			return events, err
		}
	}
	s.mu.Lock()
	s.old = nil
	s.mu.Unlock()
	return events, nil
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

func (s *Spool) replaySegment(ctx context.Context, seg *segment, retired map[ref]bool) (int, error) {
	b, err := os.ReadFile(seg.path)
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	sc, err := scan(b)
	if err != nil {
		return 0, fmt.Errorf("spool: %s changed during replay: %w", seg.path, err)
	}
	var owed []record
	for _, r := range sc.records {
		if !retired[ref{seq: seg.seq, offset: r.offset}] {
			owed = append(owed, r)
		}
	}
	s.mu.Lock()
	seg.pending = len(owed) + 1 // +1 until every record is handed over
	s.live[seg.seq] = seg
	s.mu.Unlock()

	events := 0
	var lines [][]byte
	for _, r := range owed {
		// What comes back from disk passes the checks a live request does:
		// a record no client could have sent is not replayed.
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
			s.ack(seg, r.offset)
			continue
		}
		w := buffer.NewWaiter()
		off := r.offset
		w.OnDone(func(f *buffer.Failure) {
			if f == nil || !f.Retained {
				s.ack(seg, off)
			}
		})
		// Room appears as the flusher delivers.
		switch err := s.buf.PutWait(ctx, r.key, lines, w); {
		case err == nil:
			events += r.rows
			s.m.replayed.Add(float64(r.rows))
		case ctx.Err() != nil && errors.Is(err, ctx.Err()):
			return events, err
		default:
			// It can never fit (a smaller buffer than the run that wrote
			// it) or the buffer closed: say so; the segment stays.
			s.log.Error("spool record not replayed", "path", seg.path, "events", r.rows, "err", err)
		}
	}
	s.mu.Lock()
	seg.pending--
	if seg.pending <= 0 {
		s.removeLocked(seg)
	}
	s.mu.Unlock()
	return events, nil
}
