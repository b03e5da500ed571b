package spool

import (
	"fmt"

	"github.com/tbproxy/tbproxy/buffer"
)

// PutWaiting appends the request to the current segment, waits for it to be synced
// if Fsync is FsyncAlways, and stores it in the buffer. When the buffer
// refuses it, a cancel record makes sure it is never replayed. A failed
// write (disk full, unwritable directory) returns an error wrapping
// buffer.ErrStorage and leaves the segment as it was, so the next request
// may succeed once there is room; a spool at MaxBytes refuses with
// buffer.ErrFull. w, if not nil, is the waiting client's; Put may replace a
// nil w with its own, to learn when the rows are done.
func (s *Spool) PutWaiting(key buffer.Key, lines [][]byte, w *buffer.Waiter) error {
	if len(lines) == 0 {
		return nil
	}
	if st := s.buf.Stats(); st.Events+len(lines) > st.MaxEvents {
		return buffer.ErrFull // do not write what the buffer will refuse
	}
	if recordSize(key, lines) > maxPayload {
		// Written, it could never be read back: replay would skip it as
		// corrupt after the client was told it was stored.
		return &buffer.TooLargeError{Limit: "the spool's largest record (1 GiB)"}
	}
	ep, _ := s.enc.Get().(*[]byte)
	if ep == nil {
		ep = new([]byte)
	}
	rec := appendData((*ep)[:0], s.sync, key, lines)
	defer func() {
		if cap(rec) <= 1<<20 {
			*ep = rec
			s.enc.Put(ep)
		}
	}()

	seg, off, gen, err := s.append(rec)
	if err != nil {
		return err
	}
	if s.opts.Fsync == FsyncAlways {
		if err := s.waitSynced(gen); err != nil {
			s.cancel(seg, off)
			return err
		}
	}
	if w == nil {
		w = buffer.NewWaiter()
	}
	w.OnDone(func(f *buffer.Failure) {
		if f == nil || !f.Retained {
			s.ack(seg, off)
		}
	})
	if err := s.buf.PutWaiting(key, lines, w); err != nil {
		s.cancel(seg, off)
		return err
	}
	return nil
}

// append writes rec to the current segment, rolling it first if full.
func (s *Spool) append(rec []byte) (*segment, int64, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, 0, 0, buffer.ErrClosed
	}
	// Roll first: sealing a segment whose events are all done deletes it,
	// which may be exactly the room the limit below needs. A current
	// segment without a file is one whose roll failed: try again.
	if s.cur.f == nil || (s.cur.size+int64(len(rec)) > s.opts.SegmentBytes && s.cur.size > headerLen) {
		if err := s.rollLocked(); err != nil {
			return nil, 0, 0, err
		}
	}
	if s.total+int64(len(rec)) > s.opts.MaxBytes {
		return nil, 0, 0, buffer.ErrFull
	}
	seg, start := s.cur, s.cur.size
	// Records retired since the last write go down in the same write.
	w := rec
	if len(s.done) > 0 {
		s.wbuf = appendDone(s.wbuf[:0], s.sync[:], s.done)
		w = append(s.wbuf, rec...)
		s.wbuf = w
	}
	if _, err := seg.f.Write(w); err != nil {
		s.writeFailedLocked(seg, start, err, "spool write failed; refusing requests until it succeeds")
		return nil, 0, 0, fmt.Errorf("%w: %v", buffer.ErrStorage, err)
	}
	s.done = s.done[:0]
	off := start + int64(len(w)-len(rec))
	seg.size += int64(len(w))
	s.total += int64(len(w))
	seg.pending++
	s.written++
	s.cond.Broadcast() // the syncer, in FsyncAlways mode
	return seg, off, s.written, nil
}

// writeFailedLocked undoes a write to seg that began at start and failed
// with err, leaving no torn record behind, and counts and logs the failure
// once, as msg, with anything that could not be undone added to err.
func (s *Spool) writeFailedLocked(seg *segment, start int64, err error, msg string) {
	if terr := seg.f.Truncate(start); terr != nil {
		err = fmt.Errorf("%w; cutting the write off failed too: %v", err, terr)
	}
	if _, serr := seg.f.Seek(start, 0); serr != nil {
		err = fmt.Errorf("%w; seeking back failed too: %v", err, serr)
	}
	s.m.writeErrors.Inc()
	s.log.Error(msg, "path", seg.path, "err", err)
}
