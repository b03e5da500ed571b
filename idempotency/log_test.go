package idempotency

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// reopen closes s and opens its directory again, with the same clock and
// window.
func reopen(t *testing.T, s *Store, o Options) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return open(t, o)
}

// fileRecords returns how many records the log in dir holds, checking the
// file is whole.
func fileRecords(t *testing.T, dir string) int {
	t.Helper()
	fi, err := os.Stat(filepath.Join(dir, logName))
	if err != nil {
		t.Fatal(err)
	}
	if (fi.Size()-headerSize)%recordSize != 0 {
		t.Fatalf("log of %d bytes: not a header and whole records", fi.Size())
	}
	return int((fi.Size() - headerSize) / recordSize)
}

// waitCompaction waits for the store's compactor to finish a compaction,
// and fails if it failed.
func waitCompaction(t *testing.T, ch chan error) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("compaction: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no compaction")
	}
}

// hookCompactions returns a channel that receives the result of each of
// s's compactions.
func hookCompactions(s *Store) chan error {
	ch := make(chan error, 100)
	s.lg.mu.Lock()
	s.lg.compacted = ch
	s.lg.mu.Unlock()
	return ch
}

func TestRestartKeepsAnswers(t *testing.T) {
	c := newClock()
	o := Options{Dir: t.TempDir(), Now: c.Now, Window: time.Minute}
	s := open(t, o)

	old := proceed(t, s, "", "ds", "expires", "body")
	if err := old.Stored(answer(202, 9)); err != nil {
		t.Fatal(err)
	}
	old.Done(answer(202, 9))
	c.Add(30 * time.Second)

	same := proceed(t, s, "tok", "ds", "same", "body")
	if err := same.Stored(answer(202, 1)); err != nil {
		t.Fatal(err)
	}
	same.Done(answer(202, 1)) // no second record

	waited := proceed(t, s, "tok", "ds", "wait", "body")
	if err := waited.Stored(answer(202, 2)); err != nil {
		t.Fatal(err)
	}
	final := Answer{Status: 200, Successful: 1, Quarantined: 1}
	waited.Done(final)

	errored := proceed(t, s, "tok", "ds", "error", "body")
	upstreamErr := Answer{Status: 400, Error: `column "x" not found`}
	errored.Done(upstreamErr) // no Stored: Done persists alone

	crashed := proceed(t, s, "tok", "ds2", "crashed", "body")
	if err := crashed.Stored(answer(202, 3)); err != nil {
		t.Fatal(err)
	}
	// The process dies before Done: the provisional answer is what survives.

	refused := proceed(t, s, "tok", "ds", "refused", "body")
	if err := refused.Stored(answer(202, 4)); err != nil {
		t.Fatal(err)
	}
	refused.Forget()

	memOnly := proceed(t, s, "tok", "ds", "never-stored", "body")
	_ = memOnly // in flight, never Stored: nothing on disk

	if n := fileRecords(t, o.Dir); n != 8 {
		t.Fatalf("records before the restart: got %d; want 8", n)
	}
	c.Add(30 * time.Second) // "expires" is now a minute old
	s = reopen(t, s, o)

	for _, tc := range []struct {
		scope, ds, key string
		want           Answer
	}{
		{"tok", "ds", "same", answer(202, 1)},
		{"tok", "ds", "wait", final},
		{"tok", "ds", "error", upstreamErr},
		{"tok", "ds2", "crashed", answer(202, 3)},
	} {
		_, a := mustBegin(t, s, tc.scope, tc.ds, tc.key, "body", Replay)
		if a != tc.want {
			t.Errorf("%s: got %+v; want %+v", tc.key, a, tc.want)
		}
	}
	mustBegin(t, s, "tok", "ds", "same", "other body", Mismatch)
	mustBegin(t, s, "tok", "ds", "refused", "body", Proceed)
	mustBegin(t, s, "tok", "ds", "never-stored", "body", Proceed)
	mustBegin(t, s, "", "ds", "expires", "body", Proceed)
	if n := counter(s.met.expired); n != 1 {
		t.Fatalf("expired records dropped: got %d; want 1", n)
	}
	if n := counter(s.met.corrupt); n != 0 {
		t.Fatalf("corrupt records: got %d; want 0", n)
	}
	// The window counts from Done (from Stored for "crashed") in the first run.
	c.Add(30*time.Second - 1)
	mustBegin(t, s, "tok", "ds2", "crashed", "body", Replay)
	c.Add(1)
	mustBegin(t, s, "tok", "ds2", "crashed", "body", Proceed)
}

func TestRestartSkipsCorruptRecords(t *testing.T) {
	c := newClock()
	o := Options{Dir: t.TempDir(), Now: c.Now}
	s := open(t, o)
	for i := range 5 {
		proceed(t, s, "", "ds", fmt.Sprint("k", i), "body").Done(answer(202, i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(o.Dir, logName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[headerSize+2*recordSize+offOK] ^= 0xff                   // k2's count no longer matches its CRC
	b = append(b, bytes.Repeat([]byte{0xaa}, recordSize/2)...) // a torn last record
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, o)
	for i := range 5 {
		if i == 2 {
			mustBegin(t, s, "", "ds", "k2", "body", Proceed)
			continue
		}
		if _, a := mustBegin(t, s, "", "ds", fmt.Sprint("k", i), "body", Replay); a != answer(202, i) {
			t.Errorf("k%d: got %+v; want %+v", i, a, answer(202, i))
		}
	}
	if n := counter(s.met.corrupt); n != 2 {
		t.Fatalf("corrupt records: got %d; want 2", n)
	}
	if n := fileRecords(t, o.Dir); n != 4 {
		t.Fatalf("records after Open: got %d; want the 4 kept", n)
	}
}

func TestRestartWithForeignFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content []byte
		corrupt int
	}{
		{"empty", nil, 0},
		{"torn header", []byte("TBI"), 1},
		{"other magic", bytes.Repeat([]byte("not a log "), 100), 3},
		{"other version", append([]byte("TBIK\x02\x00\x00\x01"), make([]byte, recordSize)...), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, logName), tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			s := open(t, Options{Dir: dir})
			if n := counter(s.met.corrupt); n != tc.corrupt {
				t.Fatalf("corrupt records: got %d; want %d", n, tc.corrupt)
			}
			proceed(t, s, "", "ds", "k", "body").Done(answer(202, 1))
			s = reopen(t, s, Options{Dir: dir})
			mustBegin(t, s, "", "ds", "k", "body", Replay)
		})
	}
}

func TestRestartKeepsNewestMaxKeys(t *testing.T) {
	c := newClock()
	o := Options{Dir: t.TempDir(), Now: c.Now}
	s := open(t, o)
	for i := range 5 {
		proceed(t, s, "", "ds", fmt.Sprint("k", i), "body").Done(answer(202, i))
		c.Add(time.Second)
	}
	o.MaxKeys = 3
	s = reopen(t, s, o)
	if n := counter(s.met.evicted); n != 2 {
		t.Fatalf("evicted_total: got %d; want 2", n)
	}
	for i := 4; i >= 0; i-- { // newest first: each Proceed evicts the oldest
		want := Replay
		if i < 2 {
			want = Proceed
		}
		mustBegin(t, s, "", "ds", fmt.Sprint("k", i), "body", want)
	}
}

func TestOpenCompacts(t *testing.T) {
	c := newClock()
	o := Options{Dir: t.TempDir(), Now: c.Now, Window: time.Minute}
	s := open(t, o)
	for i := range 10 {
		p := proceed(t, s, "", "ds", fmt.Sprint("k", i), "body")
		if err := p.Stored(answer(202, i)); err != nil {
			t.Fatal(err)
		}
		switch {
		case i < 3:
			p.Forget() // a record for Stored and one forgetting it
		default:
			p.Done(answer(200, i)) // two records for one key
		}
	}
	if n := fileRecords(t, o.Dir); n != 20 {
		t.Fatalf("records before compaction: got %d; want 20", n)
	}
	s = reopen(t, s, o)
	if n := fileRecords(t, o.Dir); n != 7 {
		t.Fatalf("records after Open: got %d; want the 7 live keys", n)
	}
	c.Add(time.Minute)
	s = reopen(t, s, o)
	if n := fileRecords(t, o.Dir); n != 0 {
		t.Fatalf("records after the window: got %d; want 0", n)
	}
	if n := counter(s.met.expired); n != 7 {
		t.Fatalf("expired records dropped: got %d; want 7", n)
	}
}

func TestCompactsWhileRunning(t *testing.T) {
	c := newClock()
	o := Options{Dir: t.TempDir(), Now: c.Now}
	s := open(t, o)
	compacted := hookCompactions(s)
	s.lg.mu.Lock()
	s.lg.compactMin = 9
	s.lg.mu.Unlock()
	kept := proceed(t, s, "", "ds", "kept", "body")
	kept.Done(answer(202, 1))
	// Each refused key leaves two records and no live key: the ninth
	// record, the last Forget's, is the first to reach compactMin, and it
	// outnumbers twice the one live key.
	for i := range 4 {
		p := proceed(t, s, "", "ds", fmt.Sprint("refused", i), "body")
		if err := p.Stored(answer(202, 0)); err != nil {
			t.Fatal(err)
		}
		p.Forget()
	}
	waitCompaction(t, compacted)
	if n := fileRecords(t, o.Dir); n != 1 {
		t.Fatalf("records after compaction: got %d; want 1", n)
	}
	s = reopen(t, s, o)
	mustBegin(t, s, "", "ds", "kept", "body", Replay)
	mustBegin(t, s, "", "ds", "refused3", "body", Proceed)
}

// TestAppendFailureIsRepaired breaks the log's file under the store: the
// append fails and is counted, later appends are refused, and the
// compaction the failure asks for rewrites the log from memory, after
// which appends work again.
func TestAppendFailureIsRepaired(t *testing.T) {
	o := Options{Dir: t.TempDir()}
	s := open(t, o)
	compacted := hookCompactions(s)
	s.lg.mu.Lock()
	s.lg.f.Close() // the write fails, and so does cutting the file back
	s.lg.mu.Unlock()
	p := proceed(t, s, "", "ds", "k1", "body")
	if err := p.Stored(answer(202, 1)); err == nil {
		t.Fatal("Stored on a broken log: got no error")
	}
	p.Done(answer(202, 1)) // Stored's answer: left to the compaction
	waitCompaction(t, compacted)
	if n := counter(s.met.logErrors); n != 1 {
		t.Fatalf("log_errors_total: got %d; want 1", n)
	}
	p = proceed(t, s, "", "ds", "k2", "body")
	if err := p.Stored(answer(202, 2)); err != nil {
		t.Fatalf("Stored after the repair: %v", err)
	}
	p.Done(answer(202, 2))
	s = reopen(t, s, o)
	mustBegin(t, s, "", "ds", "k1", "body", Replay)
	mustBegin(t, s, "", "ds", "k2", "body", Replay)
}

func TestOneProcessPerDir(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Options{Dir: dir})
	if _, err := Open(Options{Dir: dir}); err == nil {
		t.Fatal("a second Open of one Dir: got no error")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	open(t, Options{Dir: dir})
}

func TestStoredAfterClose(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir()})
	p := proceed(t, s, "", "ds", "k", "body")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Stored(answer(202, 1)); err == nil {
		t.Fatal("Stored after Close: got no error")
	}
	p.Done(answer(202, 1))
	mustBegin(t, s, "", "ds", "k", "body", Replay) // memory still answers
}
