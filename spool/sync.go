package spool

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// Fsync says when appended records are forced to disk.
type Fsync int

const (
	// FsyncInterval syncs every FsyncInterval: a process crash loses
	// nothing (the data is in the kernel), a power loss at most the window.
	FsyncInterval Fsync = iota
	// FsyncAlways makes every request wait for a shared fsync (group
	// commit): nothing acknowledged is lost even on power loss.
	FsyncAlways
	// FsyncNever leaves syncing to the kernel: a process crash loses
	// nothing, a power loss whatever the kernel had not written (seconds).
	FsyncNever
)

// ParseFsync reads always, interval or never.
func ParseFsync(s string) (Fsync, error) {
	switch s {
	case "always":
		return FsyncAlways, nil
	case "interval":
		return FsyncInterval, nil
	case "never":
		return FsyncNever, nil
	}
	return 0, fmt.Errorf("unknown fsync mode %q (want always, interval or never)", s)
}

// waitSynced blocks until the write numbered gen is on disk.
func (s *Spool) waitSynced(gen uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.synced < gen && s.syncErr == nil && !s.closed {
		s.cond.Wait()
	}
	if s.synced >= gen {
		return nil
	}
	if s.syncErr != nil {
		return fmt.Errorf("%w: fsync: %v", buffer.ErrStorage, s.syncErr)
	}
	return buffer.ErrClosed
}

// syncLoop is FsyncAlways' group commit: it syncs as soon as writes wait,
// and one fsync covers every write before it.
func (s *Spool) syncLoop() {
	for {
		s.mu.Lock()
		for s.synced == s.written && !s.closed {
			s.cond.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.syncOnce()
	}
}

func (s *Spool) syncOnce() {
	s.mu.Lock()
	gen, f, cur, size := s.written, s.cur.f, s.cur, s.cur.size
	if gen == s.synced || f == nil {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	err := s.syncFile(f) // outside the lock: writers keep appending meanwhile
	s.mu.Lock()
	switch {
	case err == nil:
		s.synced = max(s.synced, gen)
		s.syncErr = nil
		if cur == s.cur {
			s.syncedSize = max(s.syncedSize, size)
		}
	case gen > s.synced: // not covered by a roll's own sync meanwhile
		s.syncErr = err
		s.log.Error("spool fsync failed", "err", err)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *Spool) syncFile(f *os.File) error {
	start := time.Now()
	err := f.Sync()
	s.m.fsync.Observe(time.Since(start).Seconds())
	return err
}

// doneLoop writes down retired records every FsyncInterval, and in
// FsyncInterval mode syncs the current segment.
func (s *Spool) doneLoop(ctx context.Context) {
	t := time.NewTicker(s.opts.FsyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.mu.Lock()
			s.checkCurrentLocked()
			s.flushDoneLocked()
			s.growth.sample(time.Now(), s.total)
			s.mu.Unlock()
			s.flushSealed()
			if s.opts.Fsync == FsyncInterval {
				s.syncOnce()
			}
		}
	}
}
