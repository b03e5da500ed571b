package idempotency

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
)

// warnings records the messages a store logs.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler       { return w }
func (w *warnings) WithGroup(string) slog.Handler            { return w }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}

// count returns how many logged messages contain s.
func (w *warnings) count(s string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

// TestCorruptRecordsAreLogged: an operator is warned when Open skips
// corrupt records, and only then.
func TestCorruptRecordsAreLogged(t *testing.T) {
	w := &warnings{}
	o := Options{Dir: t.TempDir(), Logger: slog.New(w)}
	s := open(t, o)
	proceed(t, s, "", "ds", "k", "body").Done(answer(202, 1))
	s = reopen(t, s, o)
	if n := w.count("corrupt"); n != 0 {
		t.Fatalf("corrupt warnings after opening a whole log: got %d; want 0", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(o.Dir, logName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, recordSize/2)); err != nil { // a torn last record
		t.Fatal(err)
	}
	f.Close()
	s = open(t, o)
	if n := w.count("corrupt"); n != 1 {
		t.Fatalf("corrupt warnings after opening a torn log: got %d; want 1", n)
	}
	mustBegin(t, s, "", "ds", "k", "body", Replay)
}

// TestFailedAppendsAreLogged: Done and Forget report a record they could
// not write in the log (their callers are not told), and stay quiet when
// it was written.
func TestFailedAppendsAreLogged(t *testing.T) {
	w := &warnings{}
	s := open(t, Options{Dir: t.TempDir(), Logger: slog.New(w)})
	done := proceed(t, s, "", "ds", "done", "body")
	forgot := proceed(t, s, "", "ds", "forgotten", "body")
	if err := forgot.Stored(answer(202, 1)); err != nil {
		t.Fatal(err)
	}
	proceed(t, s, "", "ds", "ok", "body").Done(answer(202, 1))
	p := proceed(t, s, "", "ds", "ok-forgotten", "body")
	if err := p.Stored(answer(202, 1)); err != nil {
		t.Fatal(err)
	}
	p.Forget()
	if n := w.count("cannot persist"); n != 0 {
		t.Fatalf("warnings after appends that worked: got %d (%q); want 0", n, w.msgs)
	}
	if err := s.Close(); err != nil { // later appends fail
		t.Fatal(err)
	}
	done.Done(answer(202, 2))
	if n := w.count("cannot persist a finished key"); n != 1 {
		t.Fatalf("warnings for Done's failed append: got %d; want 1", n)
	}
	forgot.Forget()
	if n := w.count("cannot persist a forgotten key"); n != 1 {
		t.Fatalf("warnings for Forget's failed append: got %d; want 1", n)
	}
}

// TestCompactionThreshold checks the rule that decides a compaction while
// running: at least compactMin records, and more than twice as many as
// the keys logged. synctest.Wait lets the compactor finish whatever it was
// asked to do before the file is looked at.
func TestCompactionThreshold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A small log is not compacted, however few keys it holds.
		o := Options{Dir: t.TempDir()}
		s := open(t, o)
		for i := range 3 {
			p := proceed(t, s, "", "ds", fmt.Sprint("refused", i), "body")
			if err := p.Stored(answer(202, 0)); err != nil {
				t.Fatal(err)
			}
			p.Forget()
		}
		synctest.Wait()
		if n := fileRecords(t, o.Dir); n != 6 {
			t.Fatalf("records of a log below compactMin: got %d; want all 6", n)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		o = Options{Dir: t.TempDir()}
		s = open(t, o)
		setCompactMin(s, 2)
		step := func(key string, forget bool, want int) {
			t.Helper()
			p := proceed(t, s, "", "ds", key, "body")
			if err := p.Stored(answer(202, 1)); err != nil {
				t.Fatal(err)
			}
			if forget {
				p.Forget()
			} else {
				p.Done(answer(200, 1)) // another answer: a second record
			}
			synctest.Wait()
			if n := fileRecords(t, o.Dir); n != want {
				t.Fatalf("after %s: got %d records; want %d", key, n, want)
			}
		}
		step("a", false, 2) // 2 records, 1 key: exactly twice, kept
		step("b", false, 4) // 4 records, 2 keys: kept
		step("c", true, 2)  // 6 records, 2 keys: compacted to the 2 keys
		step("d", false, 4) // 4 records, 3 keys: kept (the count restarted at 2)
		step("e", true, 6)  // 6 records, 3 keys: kept
		step("f", true, 3)  // 8 records, 3 keys: compacted
		s = reopen(t, s, o) // Open rewrites the 3 keys and counts them
		setCompactMin(s, 2)
		step("g", true, 5) // 5 records, 3 keys: kept
		step("h", true, 3) // 7 records, 3 keys: compacted
		for _, k := range []string{"a", "b", "d"} {
			if _, a := mustBegin(t, s, "", "ds", k, "body", Replay); a != answer(200, 1) {
				t.Fatalf("%s: got %+v; want %+v", k, a, answer(200, 1))
			}
		}
	})
}

func setCompactMin(s *Store, n int) {
	s.lg.mu.Lock()
	s.lg.compactMin = n
	s.lg.mu.Unlock()
}

// TestCompactionKeepsKinds: a key read back from the log keeps what its
// record said (a provisional answer from Stored, or Done's final one)
// through the next compaction.
func TestCompactionKeepsKinds(t *testing.T) {
	o := Options{Dir: t.TempDir()}
	s := open(t, o)
	if err := proceed(t, s, "", "ds", "crashed", "body").Stored(answer(202, 1)); err != nil {
		t.Fatal(err)
	}
	proceed(t, s, "", "ds", "done", "body").Done(answer(200, 2))
	s = reopen(t, s, o)
	if err := s.lg.compact(); err != nil {
		t.Fatal(err)
	}
	kinds := map[[32]byte]kind{}
	if _, err := readLog(filepath.Join(o.Dir, logName), func(r *record) { kinds[r.digest] = r.kind }); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]kind{"crashed": kindStored, "done": kindDone} {
		if got := kinds[digest("", "ds", keyOf(key))]; got != want {
			t.Errorf("%s: record of kind %d; want %d", key, got, want)
		}
	}
}

// TestCompactionClosesTheOldLog: each compaction closes the file it
// replaced, so a long-running store does not run out of descriptors.
func TestCompactionClosesTheOldLog(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir()})
	proceed(t, s, "", "ds", "k", "body").Done(answer(202, 1))
	for range 3 {
		s.lg.mu.Lock()
		old := s.lg.f
		s.lg.mu.Unlock()
		if err := s.lg.compact(); err != nil {
			t.Fatal(err)
		}
		if _, err := old.Stat(); err == nil {
			t.Fatal("the log replaced by a compaction is still open")
		}
	}
}

// TestTornAppendStopsAppends: when an append fails and what it wrote
// cannot be cut off, no record may follow it in the file (records are
// framed by their offset): appends are refused until a compaction
// rewrites the log, and then work again.
func TestTornAppendStopsAppends(t *testing.T) {
	o := Options{Dir: t.TempDir()}
	s := open(t, o)
	s.lg.stopOnce.Do(func() { close(s.lg.stop) }) // no compaction but the test's
	s.lg.wg.Wait()
	dead, err := os.Create(filepath.Join(t.TempDir(), "dead"))
	if err != nil {
		t.Fatal(err)
	}
	dead.Close()
	s.lg.mu.Lock()
	real := s.lg.f
	s.lg.f = dead // the write fails, and so does cutting the file back
	s.lg.mu.Unlock()
	p1 := proceed(t, s, "", "ds", "k1", "body")
	if err := p1.Stored(answer(202, 1)); err == nil {
		t.Fatal("Stored on a failing log: got no error")
	}
	s.lg.mu.Lock()
	s.lg.f = real // the disk works again, but the log may end in a torn record
	s.lg.mu.Unlock()
	p2 := proceed(t, s, "", "ds", "k2", "body")
	if err := p2.Stored(answer(202, 2)); err == nil {
		t.Fatal("Stored after a torn append: got no error; want appends refused until a compaction")
	}
	if n := fileRecords(t, o.Dir); n != 0 {
		t.Fatalf("records after the torn append: got %d; want 0", n)
	}
	if err := s.lg.compact(); err != nil {
		t.Fatal(err)
	}
	p3 := proceed(t, s, "", "ds", "k3", "body")
	if err := p3.Stored(answer(202, 3)); err != nil {
		t.Fatalf("Stored after the compaction: %v", err)
	}
	p1.Done(answer(202, 1))
	p2.Done(answer(202, 2))
	p3.Done(answer(202, 3))
	s = reopen(t, s, o)
	for i := 1; i <= 3; i++ {
		if _, a := mustBegin(t, s, "", "ds", fmt.Sprint("k", i), "body", Replay); a != answer(202, i) {
			t.Fatalf("k%d: got %+v; want %+v", i, a, answer(202, i))
		}
	}
}

// TestLongestErrorSurvivesRestart: an error message of exactly
// MaxErrorBytes is kept whole, and replays the same after a restart.
func TestLongestErrorSurvivesRestart(t *testing.T) {
	o := Options{Dir: t.TempDir()}
	s := open(t, o)
	want := Answer{Status: 400, Error: strings.Repeat("e", MaxErrorBytes)}
	proceed(t, s, "", "ds", "k", "body").Done(want)
	if _, a := mustBegin(t, s, "", "ds", "k", "body", Replay); a != want {
		t.Fatalf("got %+v; want %+v", a, want)
	}
	s = reopen(t, s, o)
	if _, a := mustBegin(t, s, "", "ds", "k", "body", Replay); a != want {
		t.Fatalf("after a restart: got %+v; want %+v", a, want)
	}
	if n := counter(s.met.corrupt); n != 0 {
		t.Fatalf("corrupt records: got %d; want 0", n)
	}
}

// TestErrorWithNoRuneStartIsCut: an upstream message that is not UTF-8 at
// all (only continuation bytes) is cut to nothing, without a panic.
func TestErrorWithNoRuneStartIsCut(t *testing.T) {
	s := open(t, Options{})
	proceed(t, s, "", "ds", "k", "body").Done(Answer{Status: 502, Error: strings.Repeat("\x80", MaxErrorBytes+10)})
	if _, a := mustBegin(t, s, "", "ds", "k", "body", Replay); a != (Answer{Status: 502}) {
		t.Fatalf("got %+v; want status 502 and no message", a)
	}
}

// TestCompactionCountsTheTail: records appended while a compaction writes
// its snapshot are copied after it and counted, so the next compaction
// comes when the rule says. The test holds the log's lock once the
// snapshot is taken and appends a record then, as a Forget racing the
// compaction would, followed by a torn one: the torn bytes are not copied.
func TestCompactionCountsTheTail(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := Options{Dir: t.TempDir()}
		s := open(t, o)
		setCompactMin(s, 2)
		for _, k := range []string{"a", "b", "c"} {
			proceed(t, s, "", "ds", k, "body").Done(answer(200, 1))
		}
		synctest.Wait() // 3 records, 3 keys: the compactor is idle
		s.lg.mu.Lock()
		s.lg.dirty = true // compact clears it once its snapshot is taken
		s.lg.mu.Unlock()
		done := make(chan error, 1)
		go func() { done <- s.lg.compact() }()
		for {
			s.lg.mu.Lock()
			if !s.lg.dirty {
				break // held: the compaction waits to copy the tail
			}
			s.lg.mu.Unlock()
			runtime.Gosched()
		}
		gone := record{digest: digest("", "ds", keyOf("never")), kind: kindForgotten}
		if err := s.lg.appendLocked(&gone); err != nil {
			t.Fatal(err)
		}
		// Then an append tears and cannot be cut off (a failing disk): half
		// a record after the tail, and the log refuses appends.
		f, err := os.OpenFile(filepath.Join(o.Dir, logName), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(make([]byte, recordSize/2)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		s.lg.broken = true
		s.lg.mu.Unlock()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n := fileRecords(t, o.Dir); n != 4 {
			t.Fatalf("records after the compaction: got %d; want the 3 keys and the tail's 1", n)
		}
		for i, want := range []int{6, 3} { // 6 records for 3 keys: kept; 8: compacted
			p := proceed(t, s, "", "ds", fmt.Sprint("refused", i), "body")
			if err := p.Stored(answer(202, 1)); err != nil {
				t.Fatal(err)
			}
			p.Forget()
			synctest.Wait()
			if n := fileRecords(t, o.Dir); n != want {
				t.Fatalf("after refused%d: got %d records; want %d", i, n, want)
			}
		}
	})
}
