package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/tbproxy/tbproxy/buffer"
)

// maxTakenNames is how many taken segment names a roll skips before it
// gives up.
const maxTakenNames = 100

// rollLocked seals the current segment (syncing it) and starts a new one.
// A segment already sealed by a roll that then failed to start the next one
// is not sealed again: the roll only retries the new segment.
func (s *Spool) rollLocked() error {
	if old := s.cur; old != nil && old.f != nil {
		if s.opts.Fsync == FsyncAlways {
			// Writers wait on this sync; it must happen before they go on.
			if err := s.syncFile(old.f); err != nil {
				return fmt.Errorf("%w: sync %s: %v", buffer.ErrStorage, old.path, err)
			}
			s.synced = s.written
			s.cond.Broadcast()
			s.closeSealed(old.f, old.path, false)
		} else {
			// Nobody waits on it: sync (interval mode) and close off the
			// lock, so a roll does not stall every handler for an fsync.
			f, sync, path := old.f, s.opts.Fsync == FsyncInterval, old.path
			s.bg.Go(func() { s.closeSealed(f, path, sync) })
		}
		old.f, old.sealed = nil, true
		// Its retired records are written down in it from now on by
		// flushSealed, as for every sealed segment: moved only now that
		// nothing is written through its old handle any more.
		for _, r := range s.done {
			if len(old.done) == 0 {
				s.dirty = append(s.dirty, old)
			}
			old.done = append(old.done, r.offset)
		}
		s.done = s.done[:0]
		if old.pending <= 0 {
			s.removeLocked(old)
		}
	}
	var seg *segment
	var f *os.File
	var err error
	// A name already taken (a file put there by hand, or by a process that
	// did not hold the lock) is skipped, never reused.
	for range maxTakenNames {
		seg = &segment{seq: s.nextSeq, path: filepath.Join(s.opts.Dir, fmt.Sprintf("seg-%016d.spool", s.nextSeq))}
		if f, err = os.OpenFile(seg.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); !errors.Is(err, os.ErrExist) {
			break
		}
		s.nextSeq++
	}
	if err != nil {
		s.m.writeErrors.Inc()
		s.log.Warn("cannot start a new spool segment; refusing requests until it succeeds", "path", seg.path, "err", err)
		return fmt.Errorf("%w: %v", buffer.ErrStorage, err)
	}
	if _, err := f.Write(appendHeader(nil, s.sync)); err != nil {
		f.Close()
		os.Remove(seg.path)
		s.m.writeErrors.Inc()
		s.log.Warn("cannot start a new spool segment; refusing requests until it succeeds", "path", seg.path, "err", err)
		return fmt.Errorf("%w: %v", buffer.ErrStorage, err)
	}
	s.nextSeq++
	seg.f, seg.size, seg.marker = f, headerLen, s.sync[:]
	s.syncedSize = headerLen
	s.cur = seg
	s.live[seg.seq] = seg
	s.total += headerLen
	return nil
}

// closeSealed syncs, if doSync, and closes the file of a segment a roll
// sealed. No request waits on the outcome, so a failure is counted and
// logged here.
func (s *Spool) closeSealed(f *os.File, path string, doSync bool) {
	var err error
	if doSync {
		err = s.syncFile(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.m.writeErrors.Inc()
		s.log.Error("cannot sync or close a sealed spool segment; its last records may not be on disk", "path", path, "err", err)
	}
}

// checkCurrentLocked starts a new segment when the current one's file is no
// longer at its path (deleted, or replaced by another file): writes to it
// would be acknowledged into a file no restart can find. Its records are
// in the buffer and will still be delivered; only a crash before then
// would lose them, as it would have anyway.
func (s *Spool) checkCurrentLocked() {
	cur := s.cur
	if cur == nil || s.closed {
		return
	}
	if cur.f == nil { // a roll failed: try again rather than wait for a write
		if err := s.rollLocked(); err == nil {
			s.log.Info("spool writing to a new segment again", "path", s.cur.path)
		}
		return
	}
	open, err := cur.f.Stat()
	if err != nil {
		return
	}
	now, err := os.Stat(cur.path)
	switch {
	case err == nil && os.SameFile(open, now):
		return
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return // a transient error (EIO, ESTALE) says nothing about the file
	}
	s.m.writeErrors.Inc()
	s.log.Error("the current spool segment vanished or was replaced; starting a new one (is another process using SPOOL_DIR?)",
		"path", cur.path)
	cur.gone = true
	if err := s.rollLocked(); err != nil {
		s.log.Error("cannot start a new spool segment; refusing requests until it succeeds", "err", err)
	}
}

// removeLocked deletes a segment every record of which is done. A file
// that cannot be deleted now (an immutable flag, a read-only mount) first
// gets its done records, so a restart replays none of it, and deleting it
// is retried every FsyncInterval; it counts in tbproxy_spool_bytes until
// it is gone.
func (s *Spool) removeLocked(seg *segment) {
	if _, ok := s.live[seg.seq]; !ok {
		return
	}
	delete(s.live, seg.seq)
	for r := range s.canceled {
		if r.seq == seg.seq {
			delete(s.canceled, r)
		}
	}
	if seg.gone {
		s.total -= seg.size
		return
	}
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.m.writeErrors.Inc()
		s.log.Error("cannot delete delivered spool segment; will retry", "path", seg.path, "err", err)
		s.undead = append(s.undead, seg)
		if err := noteRetired(s.opts.Dir, seg.seq); err != nil {
			// The segment itself then gets its last done records, if
			// it can take them (an immutable file cannot).
			s.log.Error("cannot note a retired spool segment; a restart may replay its delivered events", "path", seg.path, "err", err)
			if len(seg.done) > 0 && !slices.Contains(s.dirty, seg) {
				s.dirty = append(s.dirty, seg)
			}
		} else {
			seg.done = nil // the retired file says it all; nothing more to write in it
		}
		return
	}
	s.total -= seg.size
	seg.done = nil
}
