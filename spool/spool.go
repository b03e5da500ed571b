// Package spool is a write-ahead log in front of the buffer: every accepted
// request is appended to a segment file before the client gets its answer,
// and a segment is deleted only once every event in it was delivered
// upstream or dropped with a reason. After a crash, the segments left
// behind are replayed into the buffer, so an acknowledged event survives
// the process (and, with fsync, the machine's power).
package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/ndjson"
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

// Options configure a Spool.
type Options struct {
	Dir string
	// SegmentBytes rolls the current segment once it is this large
	// (default 64 MiB).
	SegmentBytes int64
	// MaxBytes bounds the segments on disk; beyond it Put refuses with
	// buffer.ErrFull (default 4 GiB).
	MaxBytes      int64
	Fsync         Fsync
	FsyncInterval time.Duration // default 100ms
}

// Spool appends requests to segment files and hands them to a buffer. Safe
// for concurrent use. Create one with Open; call Replay once, before
// serving, and Close at the end.
type Spool struct {
	buf  *buffer.Buffer
	opts Options
	log  *slog.Logger
	m    *metrics
	enc  sync.Pool // of *[]byte

	mu       sync.Mutex // protects everything below; cond waits on it
	cond     *sync.Cond // group commit: writers wait for synced >= their gen
	cur      *segment
	old      []*segment // segments left by an earlier run, to replay, oldest first
	live     map[uint64]*segment
	total    int64 // bytes of all segments on disk
	nextSeq  uint64
	written  uint64 // generation of the last write
	synced   uint64 // generation known to be on disk
	syncErr  error
	done     []ref      // retired records of cur not yet written down in a done record
	wbuf     []byte     // scratch for a done record written with the next append
	dirty    []*segment // sealed segments with retired records not yet written down in them
	undead   []*segment // segments done with whose file could not be deleted; retried
	closed   bool
	bg       sync.WaitGroup // doneLoop and, in FsyncAlways mode, syncLoop
	bgCancel context.CancelFunc
	flushMu  sync.Mutex // serialises flushSealed; taken before mu, never inside it
	lock     *os.File   // holds the directory's lock until Close
	sync     syncMarker // frames this process's records; see segment.go
}

// segment is one file. pending counts its records not yet delivered or
// dropped; a sealed segment with none pending is deleted.
type segment struct {
	seq     uint64
	path    string
	f       *os.File // the current segment only
	size    int64
	pending int
	sealed  bool
	gone    bool // its file vanished or was replaced: never delete what is at path now
	// marker frames the segment's records: this process's for its own,
	// the header's for one left by an earlier run.
	marker []byte
	// done holds offsets of its records retired since they were last
	// written down; a sealed segment's are appended to its own file, so a
	// segment's done records never live in another that may be deleted
	// first.
	done []int64
}

// Open prepares dir (creating it, mode 0700: records hold client tokens in
// pass-through mode), lists the segments an earlier run left behind for
// Replay, and starts a new segment for new writes.
func Open(buf *buffer.Buffer, opts Options, reg prometheus.Registerer, log *slog.Logger) (*Spool, error) {
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = 64 << 20
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 4 << 30
	}
	if opts.FsyncInterval <= 0 {
		opts.FsyncInterval = 100 * time.Millisecond
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	lock, err := lockDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	opened := false
	defer func() {
		if !opened {
			lock.Close()
		}
	}()
	marker, err := newSyncMarker()
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{buf: buf, opts: opts, log: log, live: make(map[uint64]*segment), lock: lock, sync: marker}
	s.cond = sync.NewCond(&s.mu)
	names, err := filepath.Glob(filepath.Join(opts.Dir, "seg-*.spool"))
	if err != nil {
		return nil, err
	}
	retired := readRetired(opts.Dir, log)
	for seq := range retired {
		s.nextSeq = max(s.nextSeq, seq+1) // never reuse a number it lists
	}
	skipped := 0
	for _, name := range names {
		seq, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(name), "seg-"), ".spool"), 10, 64)
		if err != nil {
			continue
		}
		fi, err := os.Stat(name)
		if err == nil && !fi.Mode().IsRegular() {
			err = errors.New("not a regular file")
		}
		if err != nil {
			// One entry that cannot be a segment must not keep the others'
			// acknowledged events from being replayed.
			log.Error("spool entry named like a segment skipped", "path", name, "err", err)
			skipped++
			continue
		}
		seg := &segment{seq: seq, path: name, size: fi.Size(), sealed: true}
		s.total += seg.size
		s.nextSeq = max(s.nextSeq, seq+1)
		if retired[seq] { // done with, but not deleted by the run that finished it
			if err := os.Remove(name); err != nil {
				s.undead = append(s.undead, seg)
			} else {
				s.total -= seg.size
			}
			continue
		}
		s.old = append(s.old, seg)
	}
	if err := writeRetired(opts.Dir, s.undead); err != nil {
		log.Error("cannot rewrite the spool's list of retired segments", "err", err)
	}
	slices.SortFunc(s.old, func(a, b *segment) int { return int(a.seq - b.seq) })
	m, err := newMetrics(reg, s)
	if err != nil {
		return nil, err
	}
	s.m = m
	m.corrupt.Add(float64(skipped))
	s.mu.Lock()
	err = s.rollLocked()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.bgCancel = cancel
	s.bg.Go(func() { s.doneLoop(ctx) })
	if opts.Fsync == FsyncAlways {
		s.bg.Go(s.syncLoop)
	}
	opened = true
	return s, nil
}

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
		_ = seg.f.Truncate(start) // leave no torn record behind
		_, _ = seg.f.Seek(start, 0)
		s.m.writeErrors.Inc()
		s.log.Error("spool write failed; refusing requests until it succeeds", "path", seg.path, "err", err)
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

// cancel retires the record at off at once: its request was refused, so
// it must never be replayed.
func (s *Spool) cancel(seg *segment, off int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
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
// appended to its file by flushDoneLocked.
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
			_ = cur.f.Truncate(cur.size)
			_, _ = cur.f.Seek(cur.size, 0)
			s.m.writeErrors.Inc()
			s.log.Warn("cannot write a spool done record; will retry", "path", cur.path, "err", err)
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
			s.log.Warn("cannot write a spool done record; will retry", "path", j.path, "err", err)
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
			_ = old.f.Close()
		} else {
			// Nobody waits on it: sync (interval mode) and close off the
			// lock, so a roll does not stall every handler for an fsync.
			f, sync := old.f, s.opts.Fsync == FsyncInterval
			s.bg.Go(func() {
				if sync {
					_ = s.syncFile(f)
				}
				_ = f.Close()
			})
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
	s.cur = seg
	s.live[seg.seq] = seg
	s.total += headerLen
	return nil
}

func (s *Spool) syncFile(f *os.File) error {
	start := time.Now()
	err := f.Sync()
	s.m.fsync.Observe(time.Since(start).Seconds())
	return err
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
			s.mu.Unlock()
			s.flushSealed()
			if s.opts.Fsync == FsyncInterval {
				s.syncOnce()
			}
		}
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
	gen, f := s.written, s.cur.f
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
	case gen > s.synced: // not covered by a roll's own sync meanwhile
		s.syncErr = err
		s.log.Error("spool fsync failed", "err", err)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

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
		for {
			err := s.buf.PutWaiting(r.key, lines, w)
			if err == nil {
				events += r.rows
				s.m.replayed.Add(float64(r.rows))
				break
			}
			if !errors.Is(err, buffer.ErrFull) {
				// It can never fit (a smaller buffer than the run that wrote
				// it) or the buffer closed: say so; the segment stays.
				s.log.Error("spool record not replayed", "path", seg.path, "events", r.rows, "err", err)
				break
			}
			select {
			case <-ctx.Done():
				return events, ctx.Err()
			case <-time.After(20 * time.Millisecond): // room appears as the flusher delivers
			}
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

// segmentCount counts segment files: live ones, and those left by an
// earlier run that Replay has not reached yet (a segment being replayed is
// in both lists and counted once).
func (s *Spool) segmentCount() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.live)
	for _, o := range s.old {
		if _, ok := s.live[o.seq]; !ok {
			n++
		}
	}
	return float64(n)
}

// Close syncs and closes the current segment, deleting it if nothing in it
// is still owed upstream. Segments with undelivered events stay for the
// next start. Put fails with buffer.ErrClosed afterwards.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	s.bgCancel()
	s.bg.Wait()

	s.flushSealed()
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur
	s.flushDoneLocked()
	if cur.f == nil { // its roll failed: nothing open to close
		return s.lock.Close()
	}
	err := s.syncFile(cur.f)
	if cerr := cur.f.Close(); err == nil {
		err = cerr
	}
	cur.f, cur.sealed = nil, true
	if cur.pending <= 0 {
		s.removeLocked(cur)
	}
	if cerr := s.lock.Close(); err == nil {
		err = cerr
	}
	return err
}

// retiredName is the file in the spool directory that lists, one number a
// line, segments every record of which is done but whose file could not be
// deleted (an immutable flag, a read-only remount): a restart deletes them,
// or skips them if it cannot, and never replays them.
const retiredName = "retired"

// readRetired returns the segment numbers the retired file lists; an
// unreadable file lists none (logged).
func readRetired(dir string, log *slog.Logger) map[uint64]bool {
	out := map[uint64]bool{}
	b, err := os.ReadFile(filepath.Join(dir, retiredName))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Error("cannot read the spool's list of retired segments", "err", err)
		}
		return out
	}
	for line := range strings.Lines(string(b)) {
		if seq, err := strconv.ParseUint(strings.TrimSpace(line), 10, 64); err == nil {
			out[seq] = true
		}
	}
	return out
}

// noteRetired appends seq to the retired file, synced.
func noteRetired(dir string, seq uint64) error {
	f, err := os.OpenFile(filepath.Join(dir, retiredName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strconv.FormatUint(seq, 10) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeRetired replaces the retired file with the segments still on disk,
// or removes it when there are none.
func writeRetired(dir string, segs []*segment) error {
	path := filepath.Join(dir, retiredName)
	if len(segs) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	var b []byte
	for _, seg := range segs {
		b = strconv.AppendUint(b, seg.seq, 10)
		b = append(b, '\n')
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
