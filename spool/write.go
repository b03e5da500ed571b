package spool

import (
	"errors"
	"fmt"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// PutWaiting appends the request to the current segment, waits for it to
// be synced if Fsync is FsyncAlways, and stores it in the buffer; when the
// buffer has no room, or a backlog waits on disk before it, the request is
// spilled: written down only, and fed to the buffer later (backlog.go), so
// the disk bounds admission, not the buffer. When the buffer refuses it for
// good (a denied token, too large), it is refused before it is written.
// A failed write (disk full, unwritable directory) returns an error
// wrapping buffer.ErrStorage and leaves the segment as it was, so the next
// request may succeed once there is room; a spool at MaxBytes refuses with
// a buffer.FullError. w, if not nil, is the waiting client's; Put may
// replace a nil w with its own, to learn when the rows are done.
func (s *Spool) PutWaiting(key buffer.Key, lines [][]byte, w *buffer.Waiter) error {
	n := len(lines)
	if n == 0 {
		return nil
	}
	// A record names its token and datasource, not a named client: the
	// spool keys a stream the same way in memory, on disk and when it feeds
	// the backlog back (docs/clients.md, fair share with SPOOL_DIR).
	key.Client = ""
	size := buffer.Size(lines)
	if err := s.buf.Admits(key, n, size); err != nil {
		return err
	}
	if recordSize(key, size) > maxPayload {
		// Written, it could never be read back: replay would skip it as
		// corrupt after the client was told it was stored.
		return &buffer.TooLargeError{Limit: "the spool's largest record (1 GiB)"}
	}
	if s.backlogRecords.Load() == 0 && s.buf.Fits(n, size) {
		err := s.write(key, lines, size, w, false)
		if !errors.Is(err, buffer.ErrFull) {
			return err
		}
		// The buffer filled meanwhile: spill instead.
	}
	if s.buf.Closed() {
		return buffer.ErrClosed
	}
	return s.write(key, lines, size, w, true)
}

// write appends the request, spilled or held, and for a held one stores it
// in the buffer.
func (s *Spool) write(key buffer.Key, lines [][]byte, size int, w *buffer.Waiter, spill bool) error {
	ep, _ := s.enc.Get().(*[]byte)
	if ep == nil {
		ep = new([]byte)
	}
	now := time.Now().UnixNano()
	rec := appendData((*ep)[:0], s.sync, key, lines, spill, now)
	defer func() {
		if cap(rec) <= 1<<20 {
			*ep = rec
			s.enc.Put(ep)
		}
	}()
	var sp *spilled
	if spill {
		sp = &spilled{key: key, rows: len(lines), size: size, at: now, w: w}
	}
	seg, off, gen, err := s.append(rec, sp)
	if errors.Is(err, errDiskFull) {
		return &buffer.FullError{Limit: "the spool (SPOOL_MAX_BYTES)", RetryAfter: s.retryAfter(len(rec))}
	}
	if err != nil {
		return err
	}
	if s.opts.Fsync == FsyncAlways {
		if err := s.waitSynced(gen); err != nil {
			s.cancel(seg, off, sp)
			return err
		}
	}
	if spill {
		s.m.spilled.Add(float64(len(lines)))
		if w != nil {
			ref := ref{seq: seg.seq, offset: off}
			w.OnAbandon(func() {
				s.mu.Lock()
				delete(s.waiting, ref)
				s.mu.Unlock()
			})
		}
		return nil
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
		s.cancel(seg, off, nil)
		return err
	}
	return nil
}

// spilled is a request written to the backlog rather than the buffer.
type spilled struct {
	key        buffer.Key
	rows, size int
	at         int64          // when it was written, Unix nanoseconds
	w          *buffer.Waiter // its waiting client's, if any
}

// append writes rec to the current segment, rolling it first if full. A
// spilled request is counted in the backlog in the same critical section,
// so the feeder never reads a record it does not know of.
func (s *Spool) append(rec []byte, sp *spilled) (*segment, int64, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.writesClosed {
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
		return nil, 0, 0, errDiskFull
	}
	if sp != nil && s.streams[sp.key] == nil && len(s.streams) >= s.opts.MaxStreams {
		return nil, 0, 0, buffer.ErrTooManyDatasources
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
	if sp != nil {
		s.addBacklogLocked(seg, off, sp.key, sp.rows, sp.size, sp.at)
		if sp.w != nil {
			s.waiting[ref{seq: seg.seq, offset: off}] = sp.w
		}
	}
	s.cond.Broadcast() // the syncer, in FsyncAlways mode; the feeder
	return seg, off, s.written, nil
}

// retryAfter estimates when the spool, full, has room for a record of n
// bytes: the excess over MaxBytes at the rate the buffer's rows are
// delivered (what retires records on disk), clamped to [1s, 60s]; 1s
// before anything was delivered, 60s while nothing is.
func (s *Spool) retryAfter(n int) time.Duration {
	s.mu.Lock()
	excess := float64(s.total + int64(n) - s.opts.MaxBytes)
	s.mu.Unlock()
	_, bytes, known := s.buf.DrainRate()
	switch {
	case !known:
		return time.Second
	case bytes <= 0:
		return time.Minute
	}
	return min(max(time.Duration(excess/bytes*float64(time.Second)), time.Second), time.Minute)
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
