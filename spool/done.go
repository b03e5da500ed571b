package spool

import (
	"errors"
	"os"
	"slices"
)

// cancel retires the record at off at once: its request was refused, so
// it must never be replayed, nor fed if it was spilled (sp).
func (s *Spool) cancel(seg *segment, off int64, sp *spilled) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp != nil {
		r := ref{seq: seg.seq, offset: off}
		delete(s.waiting, r)
		if st := s.streams[sp.key]; st != nil {
			s.canceled[r] = true
			s.takeBacklogLocked(st, seg, 1, sp.rows, sp.size)
		}
	}
	s.ackLocked(seg, off)
	s.flushDoneLocked()
}

// ack retires the record of seg at off: its rows were delivered or dropped.
// The done record is written with the next append, or by the background
// loop; a crash before that replays the record (a duplicate, never a loss).
func (s *Spool) ack(seg *segment, off int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ackLocked(seg, off)
}

// ackLocked retires the record of seg at off. Its done record goes to the
// segment itself: with the next write if seg is the current segment, else
// appended to its file by flushSealed.
func (s *Spool) ackLocked(seg *segment, off int64) {
	if seg == s.cur && seg.f != nil {
		s.done = append(s.done, ref{seq: seg.seq, offset: off})
	} else {
		if len(seg.done) == 0 {
			s.dirty = append(s.dirty, seg)
		}
		seg.done = append(seg.done, off)
	}
	seg.pending--
	if seg.pending <= 0 && seg.sealed {
		s.removeLocked(seg)
	}
}

// flushDoneLocked writes down the current segment's retired records not
// yet written, in it, and retries deleting segments whose deletion failed.
// Sealed segments' retired records are written by flushSealed, outside the
// lock. What cannot be written now is kept for the next call.
func (s *Spool) flushDoneLocked() {
	if cur := s.cur; len(s.done) > 0 && cur != nil && cur.f != nil {
		s.wbuf = appendDone(s.wbuf[:0], s.sync[:], s.done)
		if _, err := cur.f.Write(s.wbuf); err != nil {
			s.writeFailedLocked(cur, cur.size, err, "cannot write a spool done record; will retry")
		} else {
			cur.size += int64(len(s.wbuf))
			s.total += int64(len(s.wbuf))
			s.done = s.done[:0]
		}
	}
	undead := s.undead[:0]
	for _, seg := range s.undead {
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			undead = append(undead, seg)
			continue
		}
		s.total -= seg.size
		s.log.Info("deleted a delivered spool segment on a later try", "path", seg.path)
	}
	clear(s.undead[len(undead):])
	s.undead = undead
}

// flushSealed appends to each sealed segment a done record naming its
// records retired since the last one, synced unless Fsync is never. The
// file work happens outside s.mu, so writers never wait on it; flushMu
// keeps two calls from interleaving. A segment deleted meanwhile needs
// nothing; one that cannot be written now is tried again next time.
func (s *Spool) flushSealed() {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	type job struct {
		seg    *segment
		path   string
		marker []byte
		offs   []int64
	}
	s.mu.Lock()
	var jobs []job
	for _, seg := range s.dirty {
		if _, live := s.live[seg.seq]; (live || slices.Contains(s.undead, seg)) && len(seg.done) > 0 && !seg.gone {
			jobs = append(jobs, job{seg, seg.path, seg.marker, seg.done})
		}
		seg.done = nil
	}
	s.dirty = s.dirty[:0]
	s.mu.Unlock()

	for _, j := range jobs {
		refs := make([]ref, len(j.offs))
		for i, off := range j.offs {
			refs[i] = ref{seq: j.seg.seq, offset: off}
		}
		rec := appendDone(nil, j.marker, refs)
		err := appendFile(j.path, rec, s.opts.Fsync != FsyncNever, s.syncFile)
		s.mu.Lock()
		switch _, live := s.live[j.seg.seq]; {
		case err == nil:
			j.seg.size += int64(len(rec))
			s.total += int64(len(rec))
		case !live && !slices.Contains(s.undead, j.seg): // deleted meanwhile: nothing of it can be replayed
		default:
			s.m.writeErrors.Inc()
			s.log.Error("cannot write a spool done record; will retry", "path", j.path, "err", err)
			if len(j.seg.done) == 0 {
				s.dirty = append(s.dirty, j.seg)
			}
			j.seg.done = append(j.seg.done, j.offs...)
		}
		s.mu.Unlock()
	}
}

// appendFile appends b to the existing file at path, synced with sync when
// doSync is set.
func appendFile(path string, b []byte, doSync bool, sync func(*os.File) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil && doSync {
		err = sync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
