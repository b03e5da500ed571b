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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
)

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
	// MaxStreams bounds the streams (a datasource, and a token in
	// pass-through mode) with records waiting on disk; a spill for another
	// is refused with buffer.ErrTooManyDatasources (default 1000).
	MaxStreams int
	// HighWatermark is the fill of MaxBytes at which Ready reports the
	// spool not ready (default 0.9).
	HighWatermark float64
}

// Spool appends requests to segment files and hands them to a buffer, at
// once or, when the buffer has no room, later (backlog.go). Safe for
// concurrent use. Create one with Open; call Recover (or Replay) once,
// before serving; CloseWrites and Close at the end.
type Spool struct {
	buf  *buffer.Buffer
	opts Options
	log  *slog.Logger
	m    *metrics
	enc  sync.Pool // of *[]byte

	// mu protects the fields from cond to syncedSize, and every segment's
	// fields but seq and path, which never change; cond waits on it. Lock
	// order: flushMu, then mu, then the buffer's. The fields each concern
	// uses (Open fills them before the spool is shared; Recover, the only
	// writer of old after Open, reads it without mu):
	//
	//	write (write.go)          cur total written done wbuf closed cond
	//	retire (done.go)          cur live total done wbuf dirty undead
	//	roll, remove (roll.go)    cur live total nextSeq written synced done dirty undead closed cond
	//	fsync (sync.go)           cur written synced syncErr closed cond
	//	replay (replay.go)        old live total
	//	gauges (metrics.go)       old live total, and the backlog's
	//	backlog (backlog.go)      streams turns waiting canceled backlog* oldWaiting fedOld syncedSize, segments' waiting and firstAt
	//	Close (this file)         cur closed cond, and through retire and remove
	mu      sync.Mutex
	cond    *sync.Cond // group commit: writers wait for synced >= their gen
	cur     *segment
	old     []*segment // segments left by an earlier run, to replay, oldest first
	live    map[uint64]*segment
	total   int64 // bytes of all segments on disk
	nextSeq uint64
	written uint64 // generation of the last write
	synced  uint64 // generation known to be on disk
	syncErr error
	done    []ref      // retired records of cur not yet written down in a done record
	wbuf    []byte     // scratch for a done record written with the next append
	dirty   []*segment // sealed segments with retired records not yet written down in them
	undead  []*segment // segments done with whose file could not be deleted; retried
	closed  bool
	// writesClosed refuses new requests (CloseWrites) while the backlog is
	// still fed.
	writesClosed bool

	// The backlog (backlog.go): records whose rows are not in the buffer.
	streams        map[buffer.Key]*stream
	turns          []*stream              // streams with records waiting, in the order they get their turn
	waiting        map[ref]*buffer.Waiter // wait=true clients of records not fed yet
	canceled       map[ref]bool           // spilled records refused after they were written: never fed
	backlogEvents  int64                  // rows of the records waiting
	backlogBytes   int64                  // and their bytes
	oldWaiting     int                    // records of an earlier run's segments waiting
	fedOld         int                    // events of those handed over so far
	syncedSize     int64                  // bytes of cur covered by the last fsync (FsyncAlways)
	growth         growthRate             // of total, for the time until full
	backlogRecords atomic.Int64           // records waiting; read without mu to decide whether to spill

	bg       sync.WaitGroup // doneLoop, in FsyncAlways mode syncLoop, and a roll's closing of the sealed file
	bgCancel context.CancelFunc
	flushMu  sync.Mutex // serialises flushSealed; taken before mu, never inside it
	lock     *os.File   // holds the directory's lock until Close
	sync     syncMarker // frames this process's records; see segment.go
}

// segment is one file. pending counts its records not yet delivered or
// dropped; a sealed segment with none pending is deleted. Spool.mu protects
// every field but seq and path.
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
	// old is a segment an earlier run left; retired holds the offsets of
	// its data records that are not owed (built by Recover, then only
	// read).
	old     bool
	retired map[int64]bool
	waiting int   // records waiting to be fed (backlog.go)
	firstAt int64 // when the oldest of them was written, Unix nanoseconds
}

// Open prepares dir (creating it, mode 0700: records hold client tokens in
// pass-through mode), lists the segments an earlier run left behind for
// Recover, and starts a new segment for new writes.
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
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = 1000
	}
	if opts.HighWatermark <= 0 {
		opts.HighWatermark = 0.9
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
	s := &Spool{buf: buf, opts: opts, log: log, live: make(map[uint64]*segment), lock: lock, sync: marker,
		streams: make(map[buffer.Key]*stream), waiting: make(map[ref]*buffer.Waiter), canceled: make(map[ref]bool)}
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
				log.Error("cannot delete delivered spool segment; will retry", "path", name, "err", err)
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
	m.writeErrors.Add(float64(len(s.undead))) // each logged above
	s.mu.Lock()
	err = s.rollLocked()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.bgCancel = cancel
	s.bg.Go(func() { s.doneLoop(ctx) })
	s.bg.Go(func() { s.feed(ctx) })
	if opts.Fsync == FsyncAlways {
		s.bg.Go(s.syncLoop)
	}
	opened = true
	return s, nil
}

// CloseWrites makes every later PutWaiting fail with buffer.ErrClosed, and
// waits until the backlog on disk was fed to the buffer (the flusher must
// be running), or ctx ends; then it returns the events still on disk and
// ctx.Err(). They stay there for the next start.
func (s *Spool) CloseWrites(ctx context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writesClosed = true
	s.waitLocked(ctx, func() bool { return s.backlogRecords.Load() == 0 })
	if s.backlogEvents > 0 {
		return s.backlogEvents, ctx.Err()
	}
	return 0, nil
}

// waitLocked waits on cond until done holds, ctx ends or the spool closes.
// s.mu is held.
func (s *Spool) waitLocked(ctx context.Context, done func() bool) {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	for !done() && ctx.Err() == nil && !s.closed {
		s.cond.Wait()
	}
}

// Close syncs and closes the current segment, deleting it if nothing in it
// is still owed upstream. Segments with undelivered events, and the backlog
// not yet fed, stay for the next start. Put fails with buffer.ErrClosed
// afterwards.
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
