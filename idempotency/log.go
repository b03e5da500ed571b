package idempotency

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

const (
	logName  = "idempotency.log"
	lockName = "idempotency.lock"

	// minCompactRecords is the smallest log (1 MiB) worth compacting.
	minCompactRecords = 4096
	// compactRetry is how long the compactor waits after a failure before
	// it tries again, so a full disk is not rewritten in a loop.
	compactRetry = time.Second
)

// errBroken refuses an append while the log may end in a torn record.
var errBroken = errors.New("log awaits a rewrite after a failed append")

// logFile is the store's log: an append-only file of fixed-size records
// (record.go), rewritten with only the live keys when it holds more than
// twice as many records as the store has logged keys.
type logFile struct {
	s     *Store
	dir   string
	path  string
	fsync bool
	lock  *os.File // holds the flock on lockName

	mu         sync.Mutex // protects the fields below; held across each append. Lock order: logFile.mu, then Store.mu
	f          *os.File   // the log, opened O_RDWR|O_APPEND; nil once closed
	records    int        // whole records in f after the header
	broken     bool       // f may end in a torn record that could not be cut off: appends wait for a compaction
	dirty      bool       // an append failed since the last compaction's snapshot: memory holds what the file lacks
	buf        [recordSize]byte
	compactMin int        // tests lower it
	compacted  chan error // tests set it: each compaction's result is sent on it, if there is room

	kick     chan struct{} // capacity 1: a compaction is wanted
	stop     chan struct{} // closed by close
	stopOnce sync.Once
	wg       sync.WaitGroup // the compactor
}

// openLog locks dir, loads dir's log into s, rewrites the log with what
// it kept, and starts the compactor.
func openLog(s *Store, dir string, fsync bool) (*logFile, error) {
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	lg := &logFile{
		s:          s,
		dir:        dir,
		path:       filepath.Join(dir, logName),
		fsync:      fsync,
		lock:       lock,
		compactMin: minCompactRecords,
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
	}
	recs, err := lg.load()
	if err == nil {
		err = lg.install(recs)
	}
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("idempotency: %w", err)
	}
	lg.wg.Go(lg.run)
	return lg, nil
}

// load reads the log into the store's table and returns the records it
// kept. Later records of a digest override earlier ones; expired and
// corrupt records are counted, and keys beyond MaxKeys (the oldest) are
// evicted and counted.
func (lg *logFile) load() ([]record, error) {
	s := lg.s
	last := make(map[[32]byte]record)
	corrupt, err := readLog(lg.path, func(r *record) {
		if r.kind == kindForgotten {
			delete(last, r.digest)
			return
		}
		last[r.digest] = *r
	})
	if err != nil {
		return nil, err
	}
	s.met.corrupt.Add(float64(corrupt))
	if corrupt > 0 {
		s.log.Warn("idempotency: skipped corrupt records in the log (a torn tail after a crash is expected)", "path", lg.path, "records", corrupt)
	}
	now := s.now().UnixNano()
	recs := make([]record, 0, len(last))
	for _, r := range last {
		if now-r.at >= s.window {
			s.met.expired.Inc()
			continue
		}
		recs = append(recs, r)
	}
	slices.SortFunc(recs, func(a, b record) int {
		return cmp.Or(cmp.Compare(a.at, b.at), slices.Compare(a.digest[:], b.digest[:]))
	})
	if n := len(recs) - s.maxKeys; n > 0 {
		s.met.evicted.Add(float64(n))
		recs = recs[n:]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		e := &entry{digest: r.digest, sum: r.sum, answer: r.answer, at: r.at, state: stateDone, final: r.kind == kindDone}
		s.m[r.digest] = e
		s.pushLocked(e)
		s.logLocked(e)
	}
	return recs, nil
}

// readLog calls fn with each whole record of the log at path, in file
// order, and returns how many records it skipped as corrupt (scanLog). A
// missing file holds no records. fn must not retain r.
func readLog(path string, fn func(r *record)) (corrupt int, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	corrupt, err = scanLog(bufio.NewReaderSize(f, 64<<10), fi.Size(), fn)
	if err != nil {
		return corrupt, fmt.Errorf("read %s: %w", path, err)
	}
	return corrupt, nil
}

// scanLog calls fn with each whole record of a log of size bytes read
// from r, and returns how many records it skipped as corrupt: failing
// their checksum, a torn last one, or all of a log with another header.
func scanLog(r io.Reader, size int64, fn func(r *record)) (corrupt int, err error) {
	var b [recordSize]byte
	switch _, err := io.ReadFull(r, b[:headerSize]); {
	case err == io.EOF:
		return 0, nil
	case err == io.ErrUnexpectedEOF:
		return 1, nil
	case err != nil:
		return 0, err
	case !validHeader(b[:headerSize]):
		return max(1, int(size/recordSize)), nil
	}
	var rec record
	for {
		_, err := io.ReadFull(r, b[:])
		switch {
		case err == io.EOF:
			return corrupt, nil
		case err == io.ErrUnexpectedEOF:
			return corrupt + 1, nil
		case err != nil:
			return corrupt, err
		case !rec.decode(b[:]):
			corrupt++
		default:
			fn(&rec)
		}
	}
}

// install makes a log of recs the store's log, replacing the file.
func (lg *logFile) install(recs []record) error {
	tmp, err := writeLog(lg.path+".tmp", recs)
	if err != nil {
		return err
	}
	err = lg.replaceWith(tmp)
	if lg.f != tmp {
		return err
	}
	lg.records = len(recs)
	if err != nil {
		// The new log is in place; only its name may not survive a power
		// loss, which the next compaction retries.
		lg.s.met.logErrors.Inc()
		lg.s.log.Warn("idempotency: cannot sync the log's directory", "dir", lg.dir, "err", err)
	}
	return nil
}

// writeLog writes a log of recs to path, synced, and returns it open for
// appending. On error it leaves no file.
func writeLog(path string, recs []record) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	_, err = w.Write(appendHeader(make([]byte, 0, headerSize)))
	var b [recordSize]byte
	for i := 0; i < len(recs) && err == nil; i++ {
		recs[i].encode(b[:])
		_, err = w.Write(b[:])
	}
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return f, nil
}

// replaceWith renames tmp, a synced log file, over the log and makes it
// lg.f, closing the old one; lg.mu is held (or not yet shared). If the
// rename fails, tmp is removed and lg.f is unchanged. An error syncing the
// directory after the rename is returned, with tmp installed anyway.
func (lg *logFile) replaceWith(tmp *os.File) error {
	if err := os.Rename(tmp.Name(), lg.path); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if lg.f != nil {
		lg.f.Close()
	}
	lg.f = tmp
	return syncDir(lg.dir)
}

// size is the length of the log's header and whole records; lg.mu is held.
func (lg *logFile) size() int64 {
	return headerSize + int64(lg.records)*recordSize
}

// appendLocked appends r to the log (and syncs it with Fsync); lg.mu is
// held. A failure is counted; after one the log asks for a compaction,
// which rewrites it from memory.
func (lg *logFile) appendLocked(r *record) error {
	err := lg.tryAppendLocked(r)
	if err != nil {
		lg.s.met.logErrors.Inc()
		lg.dirty = true
		lg.wantCompaction()
		return err
	}
	lg.s.mu.Lock()
	logged := lg.s.logged
	lg.s.mu.Unlock()
	if lg.records >= lg.compactMin && lg.records > 2*logged {
		lg.wantCompaction()
	}
	return nil
}

func (lg *logFile) tryAppendLocked(r *record) error {
	if lg.f == nil {
		return ErrClosed
	}
	if lg.broken {
		return errBroken
	}
	r.encode(lg.buf[:])
	if _, err := lg.f.Write(lg.buf[:]); err != nil {
		// Cut off what part of the record was written: records are framed
		// by their offset alone, so a torn one must not be followed by more.
		if terr := lg.f.Truncate(lg.size()); terr != nil {
			lg.broken = true
		}
		return fmt.Errorf("append to %s: %w", lg.path, err)
	}
	lg.records++
	if lg.fsync {
		if err := lg.f.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", lg.path, err)
		}
	}
	return nil
}

// wantCompaction asks the compactor for a compaction, without blocking.
func (lg *logFile) wantCompaction() {
	select {
	case lg.kick <- struct{}{}:
	default:
	}
}

// run is the compactor: it compacts the log when asked, until close.
func (lg *logFile) run() {
	retry := time.NewTimer(0)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-lg.stop:
			return
		case <-lg.kick:
		case <-retry.C:
		}
		err := lg.compact()
		lg.mu.Lock()
		if lg.compacted != nil {
			select {
			case lg.compacted <- err:
			default:
			}
		}
		lg.mu.Unlock()
		if err == nil {
			continue
		}
		lg.s.met.logErrors.Inc()
		lg.s.log.Warn("idempotency: cannot compact the log", "path", lg.path, "err", err)
		lg.mu.Lock()
		again := lg.dirty || lg.broken
		lg.mu.Unlock()
		if again {
			retry.Reset(compactRetry)
		}
	}
}

// compact rewrites the log with a record for each key the store has
// logged. The snapshot is taken, and at the end the records appended
// meanwhile are copied over, under lg.mu; the bulk is written without it,
// so appends (and Begin, which never takes lg.mu) go on meanwhile.
func (lg *logFile) compact() error {
	s := lg.s
	lg.mu.Lock()
	if lg.f == nil {
		lg.mu.Unlock()
		return nil
	}
	s.mu.Lock()
	snap := make([]record, 0, s.logged)
	for _, e := range s.m {
		if e.logged {
			k := kindStored
			if e.final {
				k = kindDone
			}
			snap = append(snap, record{digest: e.digest, sum: e.sum, at: e.at, kind: k, answer: e.answer})
		}
	}
	s.mu.Unlock()
	off := lg.size()
	lg.dirty = false
	lg.mu.Unlock()

	tmp, err := writeLog(lg.path+".tmp", snap)
	lg.mu.Lock()
	defer lg.mu.Unlock()
	if err != nil {
		lg.dirty = true
		return err
	}
	if lg.f == nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil
	}
	end := lg.size()
	if end > off {
		_, err := io.Copy(tmp, io.NewSectionReader(lg.f, off, end-off))
		if err == nil {
			err = tmp.Sync()
		}
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			lg.dirty = true
			return fmt.Errorf("copy the log's tail to %s: %w", tmp.Name(), err)
		}
	}
	err = lg.replaceWith(tmp)
	if lg.f != tmp {
		lg.dirty = true
		return fmt.Errorf("replace %s: %w", lg.path, err)
	}
	lg.records = len(snap) + int((end-off)/recordSize)
	lg.broken = false
	if err != nil {
		return fmt.Errorf("sync %s after replacing the log: %w", lg.dir, err)
	}
	return nil
}

// close stops the compactor, then syncs and closes the log and releases
// the directory's lock. Later calls return nil.
func (lg *logFile) close() error {
	lg.stopOnce.Do(func() { close(lg.stop) })
	lg.wg.Wait()
	lg.mu.Lock()
	defer lg.mu.Unlock()
	if lg.f == nil {
		return nil
	}
	err := lg.f.Sync()
	if cerr := lg.f.Close(); err == nil {
		err = cerr
	}
	lg.f = nil
	if cerr := lg.lock.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("idempotency: close %s: %w", lg.path, err)
	}
	return nil
}

// syncDir syncs dir, so a rename in it survives a power loss.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// lockDir takes an exclusive, non-blocking lock on dir's lockName for this
// process: two processes appending to one log would interleave records
// and rewrite each other's file. The lock goes with the returned file, or
// with the process.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("idempotency: lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("idempotency: %s is in use by another process; two processes must not share its log", dir)
		}
		return nil, fmt.Errorf("idempotency: lock %s: %w", path, err)
	}
	return f, nil
}
