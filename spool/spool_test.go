package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
)

func open(t testing.TB, dir string, buf *buffer.Buffer, opts Options) *Spool {
	t.Helper()
	opts.Dir = dir
	s, err := Open(buf, opts, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // before TempDir's removal; Close is idempotent
	return s
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "seg-*.spool"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// die stops s as a killed process stops: its background work ends, and its
// files and directory lock are let go with nothing more written.
func die(s *Spool) {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	s.bgCancel()
	s.bg.Wait()
	if s.cur != nil && s.cur.f != nil {
		s.cur.f.Close()
	}
	s.lock.Close()
}

// deliver plays the flusher: it takes everything from buf and finishes it
// as delivered (or with f).
func deliver(buf *buffer.Buffer, f *buffer.Failure) int {
	n := 0
	for _, e := range buf.Take(nil) {
		if e.Waiter != nil {
			e.Waiter.AddPart()
			e.Waiter.Finish(e.Rows, 0, f)
		}
		buf.Release(e.Key, e.Rows, e.Data)
		n += e.Rows
	}
	return n
}

// TestSurvivesRestart: what was accepted and not delivered when the process
// stopped is replayed by the next one; what was delivered is not.
func TestSurvivesRestart(t *testing.T) {
	for _, mode := range []Fsync{FsyncAlways, FsyncInterval, FsyncNever} {
		t.Run(map[Fsync]string{FsyncAlways: "always", FsyncInterval: "interval", FsyncNever: "never"}[mode], func(t *testing.T) {
			dir := t.TempDir()
			buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
			s := open(t, dir, buf, Options{Fsync: mode, SegmentBytes: 256})
			for i := range 10 {
				if err := s.PutWaiting(buffer.Key{Token: "t", Datasource: "ds"}, lines(`{"n":`+string(rune('0'+i))+`}`), nil); err != nil {
					t.Fatal(err)
				}
			}
			if got := deliver(buf, nil); got != 10 {
				t.Fatalf("delivered %d; want 10", got)
			}
			if err := s.PutWaiting(buffer.Key{Token: "t", Datasource: "ds"}, lines(`{"late":1}`, `{"late":2}`), nil); err != nil {
				t.Fatal(err)
			}
			// The process "dies" here: no Close, nothing delivered.
			if n := len(segments(t, dir)); n != 1 {
				t.Errorf("%d segment files; want only the one still owed (sealed delivered ones deleted)", n)
			}

			die(s)
			buf2 := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
			s2 := open(t, dir, buf2, Options{Fsync: mode})
			n, err := s2.Replay(context.Background())
			if err != nil || n != 2 {
				t.Fatalf("Replay: %d events, %v; want the 2 undelivered", n, err)
			}
			got := buf2.Take(nil)
			if len(got) != 1 || string(got[0].Data) != "{\"late\":1}\n{\"late\":2}\n" || got[0].Key.Token != "t" {
				t.Fatalf("replayed %+v", got)
			}
			got[0].Waiter.AddPart()
			got[0].Waiter.Finish(2, 0, nil)
			buf2.Release(got[0].Key, 2, got[0].Data)
			if err := s2.Close(); err != nil {
				t.Fatal(err)
			}
			if left := segments(t, dir); len(left) != 0 {
				t.Errorf("after everything was delivered and Close: %v remain", left)
			}
			if got := testutil.ToFloat64(s2.m.replayed); got != 2 {
				t.Errorf("tbproxy_spool_replayed_events_total: got %v; want 2", got)
			}
		})
	}
}

// TestRetainedAtShutdown: rows a shutdown could not deliver keep their
// segment, to be replayed.
func TestRetainedAtShutdown(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{})
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{}`), nil); err != nil {
		t.Fatal(err)
	}
	deliver(buf, &buffer.Failure{Status: 503, Retained: true})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(segments(t, dir)) != 1 {
		t.Fatalf("the retained row's segment was deleted")
	}
	buf2 := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	if n, _ := open(t, dir, buf2, Options{}).Replay(context.Background()); n != 1 {
		t.Errorf("replayed %d; want the retained row", n)
	}
}

// TestRefusedRequestNotReplayed: a request the buffer refused after it was
// written is cancelled, so a restart does not deliver what the client was
// told was refused.
func TestRefusedRequestNotReplayed(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	// No background write-down: only the refusal itself may write the
	// cancel record, at once.
	s := open(t, dir, buf, Options{FsyncInterval: time.Hour})
	if err := s.PutWaiting(buffer.Key{Token: "ok", Datasource: "ds"}, lines(`{"kept":1}`), nil); err != nil {
		t.Fatal(err)
	}
	buf.Deny(buffer.Key{Token: "revoked", Datasource: "ds"}, time.Now().Add(time.Hour))
	if err := s.PutWaiting(buffer.Key{Token: "revoked", Datasource: "ds"}, lines(`{}`), nil); !errors.Is(err, buffer.ErrDenied) {
		t.Fatalf("got %v; want ErrDenied", err)
	}
	die(s) // right after the refusal, before any later write could carry its cancel record
	buf2 := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s2 := open(t, dir, buf2, Options{})
	if n, err := s2.Replay(context.Background()); n != 1 || err != nil {
		t.Fatalf("replayed %d (%v); want only the accepted request", n, err)
	}
	if got := buf2.Take(nil); got[0].Key.Token != "ok" {
		t.Errorf("replayed %+v", got)
	}
}

func TestMaxBytes(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1 << 20, MaxBytes: 1 << 30})
	s := open(t, t.TempDir(), buf, Options{MaxBytes: 300, SegmentBytes: 64 << 10})
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"padding":"xxxxxxxxxxxxxxxxxxxx"}`), nil)
	}
	if !errors.Is(err, buffer.ErrFull) {
		t.Fatalf("got %v; want ErrFull once SPOOL_MAX_BYTES is reached", err)
	}
}

// TestRoomComesBack: once the events in the spool are delivered, their
// segments go and writes are accepted again, even with a limit of a single
// segment.
func TestRoomComesBack(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1 << 20, MaxBytes: 1 << 30})
	s := open(t, t.TempDir(), buf, Options{MaxBytes: 400, SegmentBytes: 400})
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"padding":"xxxxxxxxxxxxxxxxxxxx"}`), nil)
	}
	if !errors.Is(err, buffer.ErrFull) {
		t.Fatalf("got %v; want ErrFull at the limit", err)
	}
	deliver(buf, nil)
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"again":1}`), nil); err != nil {
		t.Errorf("after everything was delivered: got %v; want the write accepted", err)
	}
}

// TestUnwritable: a spool that cannot write refuses the request with
// ErrStorage, stores nothing, and works again once it can write.
func TestUnwritable(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{})
	// Make the current segment's file unwritable by closing it under the
	// spool: every write now fails, as on a disk that went away.
	s.mu.Lock()
	f := s.cur.f
	s.mu.Unlock()
	f.Close()
	err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{}`), nil)
	if !errors.Is(err, buffer.ErrStorage) || buf.Len() != 0 {
		t.Fatalf("got %v with %d buffered; want ErrStorage and nothing stored", err, buf.Len())
	}
	if got := testutil.ToFloat64(s.m.writeErrors); got != 1 {
		t.Errorf("tbproxy_spool_write_errors_total: got %v; want 1", got)
	}
	// The disk "comes back": a fresh segment.
	s.mu.Lock()
	s.cur.sealed = true
	s.cur.f = nil
	s.cur = nil
	err = s.rollLocked()
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{}`), nil); err != nil || buf.Len() != 1 {
		t.Errorf("after recovery: got %v, %d buffered; want it stored", err, buf.Len())
	}
}

// TestRollFailureRecovers: when the next segment cannot be created, writes
// are refused with ErrStorage, and they are accepted again as soon as it
// can be, in every fsync mode (FsyncAlways used to retry syncing the
// segment it had already sealed, and refused writes until a restart).
func TestRollFailureRecovers(t *testing.T) {
	for _, mode := range []Fsync{FsyncAlways, FsyncInterval, FsyncNever} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			dir := t.TempDir()
			buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
			var logs bytes.Buffer // written under the spool's lock only
			s, err := Open(buf, Options{Dir: dir, Fsync: mode, SegmentBytes: 256}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() }) // before TempDir's removal, which the spool would see as a vanished segment
			key := buffer.Key{Datasource: "ds"}
			line := lines(fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 100)))
			if err := s.PutWaiting(key, line, nil); err != nil {
				t.Fatal(err)
			}
			// Squat the next segments' names: a roll skips a taken name, up
			// to maxTakenNames of them, so each of the next three fails.
			s.mu.Lock()
			first := s.nextSeq
			s.mu.Unlock()
			var squatted []string
			for seq := first; seq < first+3*maxTakenNames; seq++ {
				next := filepath.Join(dir, fmt.Sprintf("seg-%016d.spool", seq))
				if err := os.Mkdir(next, 0o700); err != nil {
					t.Fatal(err)
				}
				squatted = append(squatted, next)
			}
			for range 5 { // fill the segment until a roll is needed
				if err = s.PutWaiting(key, line, nil); err != nil {
					break
				}
			}
			if !errors.Is(err, buffer.ErrStorage) {
				t.Fatalf("with the next segment uncreatable: got %v; want ErrStorage", err)
			}
			if err := s.PutWaiting(key, line, nil); !errors.Is(err, buffer.ErrStorage) {
				t.Fatalf("again: got %v; want ErrStorage", err)
			}
			s.mu.Lock()
			logged := strings.Contains(logs.String(), "cannot start a new spool segment")
			s.mu.Unlock()
			if !logged {
				t.Errorf("a failed segment switch was not logged: %q", logs.String())
			}
			for _, name := range squatted[2*maxTakenNames:] {
				if err := os.Remove(name); err != nil {
					t.Fatal(err)
				}
			}
			held := buf.Len()
			if err := s.PutWaiting(key, line, nil); err != nil || buf.Len() != held+1 {
				t.Errorf("once the segment can be created: got %v, %d buffered; want it stored (%d)", err, buf.Len(), held+1)
			}
		})
	}
}

// TestOneProcessPerDirectory: a second Open of a directory in use fails,
// naming the holder's pid; once the first closes, it succeeds.
func TestOneProcessPerDirectory(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{})
	_, err := Open(buf, Options{Dir: dir}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "in use by another process (pid "+fmt.Sprint(os.Getpid())+")") {
		t.Fatalf("second Open: got %v; want it refused naming pid %d", err, os.Getpid())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir, buf, Options{})
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestVanishedSegmentIsReplaced: when the current segment's file is deleted
// (or replaced) behind the spool's back, the spool notices within an fsync
// interval and writes to a new segment, so later acknowledged requests
// are in a file a restart finds; the file at the old path is left alone.
func TestVanishedSegmentIsReplaced(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{FsyncInterval: 10 * time.Millisecond})
	key := buffer.Key{Datasource: "ds"}
	if err := s.PutWaiting(key, lines(`{"a":1}`), nil); err != nil {
		t.Fatal(err)
	}
	segs := segments(t, dir)
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segs[0], []byte("someone else's"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(segments(t, dir)) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no new segment after the current one was replaced")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.PutWaiting(key, lines(`{"a":2}`), nil); err != nil {
		t.Fatal(err)
	}
	deliver(buf, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(segs[0]); err != nil || string(b) != "someone else's" {
		t.Errorf("the file now at the old path: %q, %v; want it untouched", b, err)
	}
}

// TestReplayChecksRecords: a record read back from disk that no client
// could have sent (a datasource name like ../../x, a token with a control
// byte, a line that is not a JSON object) is counted, logged and retired,
// never replayed; the valid records beside it are.
func TestReplayChecksRecords(t *testing.T) {
	dir := t.TempDir()
	b := appendHeader(nil, testMarker)
	b = appendData(b, testMarker, buffer.Key{Datasource: "../../x"}, lines(`{"bad":"name"}`), false, 0)
	b = appendData(b, testMarker, buffer.Key{Token: "a\x00b", Datasource: "ds"}, lines(`{"bad":"token"}`), false, 0)
	b = appendData(b, testMarker, buffer.Key{Datasource: "ds"}, lines(`{"ok":1}`, `not json`), false, 0)
	b = appendData(b, testMarker, buffer.Key{Datasource: "ds"}, lines(`{"ok":2}`), false, 0)
	if err := os.WriteFile(filepath.Join(dir, "seg-0000000000000001.spool"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{})
	if n, err := s.Replay(context.Background()); n != 1 || err != nil {
		t.Fatalf("replayed %d (%v); want only the valid record", n, err)
	}
	got := buf.Take(nil)
	if len(got) != 1 || string(got[0].Data) != `{"ok":2}`+"\n" {
		t.Fatalf("replayed %+v", got)
	}
	if c := testutil.ToFloat64(s.m.corrupt); c != 3 {
		t.Errorf("corrupt records counted %v; want 3", c)
	}
	got[0].Waiter.AddPart()
	got[0].Waiter.Finish(1, 0, nil)
	buf.Release(got[0].Key, 1, got[0].Data)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if left := segments(t, dir); len(left) != 0 {
		t.Errorf("segments left %v; want none: the skipped records are retired too", left)
	}
}

// TestCleanRestartReplaysOnlyWhatIsOwed: with one datasource stuck (its
// first record never delivered) while later segments are delivered and
// deleted, a clean restart replays the stuck record and nothing that was
// delivered: a segment's done records live in the segment itself, never in
// a later one that is deleted first.
func TestCleanRestartReplaysOnlyWhatIsOwed(t *testing.T) {
	for _, mode := range []Fsync{FsyncAlways, FsyncInterval, FsyncNever} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			dir := t.TempDir()
			buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
			s := open(t, dir, buf, Options{Fsync: mode, SegmentBytes: 300, FsyncInterval: 5 * time.Millisecond})
			if err := s.PutWaiting(buffer.Key{Datasource: "stuck"}, lines(`{"stuck":1}`), nil); err != nil {
				t.Fatal(err)
			}
			for i := range 40 {
				if err := s.PutWaiting(buffer.Key{Datasource: "ok"}, lines(fmt.Sprintf(`{"ok":%d,"pad":"%s"}`, i, strings.Repeat("x", 40))), nil); err != nil {
					t.Fatal(err)
				}
				if i%5 == 4 { // the flusher delivers all but the stuck one as it goes
					for _, e := range buf.Take(nil) {
						if e.Key.Datasource == "stuck" {
							defer buf.Release(e.Key, e.Rows, e.Data) // never delivered
							continue
						}
						e.Waiter.AddPart()
						e.Waiter.Finish(e.Rows, 0, nil)
						buf.Release(e.Key, e.Rows, e.Data)
					}
					time.Sleep(10 * time.Millisecond) // let done records be written down as time passes
				}
			}
			if n := len(segments(t, dir)); n < 2 {
				t.Fatalf("%d segments; the test needs the stuck one and a current one", n)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			buf2 := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
			s2 := open(t, dir, buf2, Options{Fsync: mode})
			n, err := s2.Replay(context.Background())
			got := buf2.Take(nil)
			if err != nil || n != 1 || len(got) != 1 || got[0].Key.Datasource != "stuck" {
				var ds []string
				for _, e := range got {
					ds = append(ds, e.Key.Datasource+":"+strings.TrimSpace(string(e.Data)))
				}
				t.Fatalf("replayed %d events (%v): %v; want only the stuck one", n, err, ds)
			}
			s2.Close()
		})
	}
}

// TestUndeletableSegmentRetried: a segment whose file cannot be deleted
// when it is done (chattr +i here) stays counted in tbproxy_spool_bytes,
// its deletion is retried until it succeeds, and a restart meanwhile
// replays none of its delivered events.
func TestUndeletableSegmentRetried(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{SegmentBytes: 300, FsyncInterval: 5 * time.Millisecond})
	for i := range 10 {
		if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", 40))), nil); err != nil {
			t.Fatal(err)
		}
	}
	segs := segments(t, dir)
	if len(segs) < 2 {
		t.Fatalf("%d segments; want a sealed one", len(segs))
	}
	first := segs[0]
	if out, err := exec.Command("chattr", "+i", first).CombinedOutput(); err != nil {
		t.Skipf("chattr +i: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", first).Run() })
	if n := deliver(buf, nil); n != 10 {
		t.Fatalf("delivered %d", n)
	}
	if _, err := os.Stat(first); err != nil {
		t.Fatalf("the immutable segment is gone: %v", err)
	}
	s.mu.Lock()
	got := s.total // tbproxy_spool_bytes
	s.mu.Unlock()
	if got < fileSize(t, first) {
		t.Errorf("tbproxy_spool_bytes = %d with an undeleted segment of %d bytes on disk", got, fileSize(t, first))
	}
	// A clean restart while it is still there replays nothing.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	buf2 := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s2 := open(t, dir, buf2, Options{FsyncInterval: 5 * time.Millisecond})
	if n, err := s2.Replay(context.Background()); n != 0 || err != nil {
		t.Fatalf("replayed %d (%v) delivered events; want 0", n, err)
	}
	if err := exec.Command("chattr", "-i", first).Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(first); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the segment was never deleted once it could be")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s2.Close()
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestUnreadableEntrySkipped: a directory named like a segment is skipped
// and counted; the real segments beside it are still replayed.
func TestUnreadableEntrySkipped(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{})
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"kept":1}`), nil); err != nil {
		t.Fatal(err)
	}
	die(s)
	if err := os.Mkdir(filepath.Join(dir, "seg-0000000000000099.spool"), 0o700); err != nil {
		t.Fatal(err)
	}
	buf2 := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s2 := open(t, dir, buf2, Options{})
	if n, err := s2.Replay(context.Background()); n != 1 || err != nil {
		t.Fatalf("replayed %d (%v); want the real segment's event", n, err)
	}
	if got := testutil.ToFloat64(s2.m.corrupt); got != 1 {
		t.Errorf("corrupt = %v; want the skipped entry counted", got)
	}
	s2.Close()
}

// TestReplayedThenRetained: rows replayed from an earlier run and then kept
// again at a shutdown timeout (Retained) are still owed: the next start
// replays them once more.
func TestReplayedThenRetained(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{})
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"owed":1}`), nil); err != nil {
		t.Fatal(err)
	}
	die(s)
	for run := range 2 {
		buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
		s := open(t, dir, buf, Options{})
		if n, err := s.Replay(context.Background()); n != 1 || err != nil {
			t.Fatalf("run %d: replayed %d (%v); want the owed row", run, n, err)
		}
		deliver(buf, &buffer.Failure{Status: 503, Reason: "shutdown_timeout", Retained: true})
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVanishedSegmentThenFailedRoll: when the current segment vanishes and
// starting the next one fails too, later writes try again instead of
// writing to no file and answering 503 until a restart.
func TestVanishedSegmentThenFailedRoll(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{FsyncInterval: 5 * time.Millisecond})
	key := buffer.Key{Datasource: "ds"}
	if err := s.PutWaiting(key, lines(`{"a":1}`), nil); err != nil {
		t.Fatal(err)
	}
	breakNextRoll(t, s, dir)
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(s.m.writeErrors) < 2 { // the vanished segment, then the failed roll
		if time.Now().After(deadline) {
			t.Fatal("the vanished segment was not noticed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The next write tries the roll again (past the taken names) and goes on.
	for {
		err := s.PutWaiting(key, lines(`{"a":3}`), nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refusing once a segment can be started: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSingleAckInSealedSegment: one record retired in a sealed segment that
// still owes another is written down in it by a clean shutdown, so the
// restart replays only what is owed.
func TestSingleAckInSealedSegment(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{SegmentBytes: 300, FsyncInterval: time.Hour})
	pad := strings.Repeat("p", 60)
	for _, ds := range []string{"first", "second", "third", "fourth"} { // two records a segment
		if err := s.PutWaiting(buffer.Key{Datasource: ds}, lines(`{"pad":"`+pad+`"}`), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(segments(t, dir)); n < 2 {
		t.Fatalf("%d segments; want the first one sealed", n)
	}
	for _, e := range buf.Take(nil) { // deliver only the first record
		if e.Key.Datasource == "first" {
			e.Waiter.AddPart()
			e.Waiter.Finish(e.Rows, 0, nil)
			buf.Release(e.Key, e.Rows, e.Data)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	buf2 := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s2 := open(t, dir, buf2, Options{})
	if n, err := s2.Replay(context.Background()); n != 3 || err != nil {
		t.Fatalf("replayed %d (%v); want the 3 undelivered", n, err)
	}
	for _, e := range buf2.Take(nil) {
		if e.Key.Datasource == "first" {
			t.Error("the delivered record was replayed")
		}
	}
}

// TestFillsTheBufferExactly: the spool puts a request that exactly fills
// the buffer into it, and spills only the one after.
func TestFillsTheBufferExactly(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 3, MaxBytes: 1 << 20})
	s, _, reg := openObserved(t, t.TempDir(), buf, Options{})
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{}`, `{}`), nil); err != nil || buf.Len() != 3 {
		t.Fatalf("2 more in a buffer of 3 holding 1: %v, %d buffered; want all 3 in the buffer", err, buf.Len())
	}
	if got := metric(t, reg, "tbproxy_spool_spilled_events_total"); got != 0 {
		t.Fatalf("%v events spilled; want none while they fit", got)
	}
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{}`), nil); err != nil {
		t.Fatalf("one more: got %v; want it accepted onto disk", err)
	}
	if got := metric(t, reg, "tbproxy_spool_spilled_events_total"); got != 1 || buf.Len() != 3 {
		t.Fatalf("%v events spilled, %d buffered; want the 4th spilled, the buffer still at 3", got, buf.Len())
	}
}

// TestOffsetsAfterAPrependedDoneRecord: a write that carries earlier done
// records in front of its own record still retires the right record when
// it is delivered: a clean restart replays nothing, and counts nothing as
// corrupt.
func TestOffsetsAfterAPrependedDoneRecord(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{FsyncInterval: time.Hour}) // done records go only with writes
	for i := range 5 {
		if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(fmt.Sprintf(`{"i":%d}`, i)), nil); err != nil {
			t.Fatal(err)
		}
		deliver(buf, nil) // its done record goes in front of the next write
	}
	// One owed record keeps the segment (and the offsets in it) on disk.
	if err := s.PutWaiting(buffer.Key{Datasource: "owed"}, lines(`{"owed":1}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, rows := replayed(t, dir, Options{})
	if len(rows) != 1 {
		t.Fatalf("replayed %q; want only the owed event", rows)
	}
	if c := testutil.ToFloat64(s2.m.corrupt); c != 0 {
		t.Errorf("%v records counted corrupt after a clean shutdown; want 0", c)
	}
}

// TestSegmentsRollAtTheirSize: with the default options a segment holds
// many small records; with SegmentBytes set, no segment grows past it by
// more than one record.
func TestSegmentsRollAtTheirSize(t *testing.T) {
	for _, segBytes := range []int64{0, 256} {
		dir := t.TempDir()
		buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
		s := open(t, dir, buf, Options{SegmentBytes: segBytes})
		rec := fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 60))
		for range 20 {
			if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(rec), nil); err != nil {
				t.Fatal(err)
			}
		}
		segs := segments(t, dir)
		if segBytes == 0 && len(segs) != 1 {
			t.Errorf("default SegmentBytes: %d segments for 20 small records; want 1", len(segs))
		}
		for _, seg := range segs {
			framed := int64(len(appendData(nil, s.sync, buffer.Key{Datasource: "ds"}, lines(rec), false, 0)))
			if segBytes > 0 && fileSize(t, seg) > segBytes+framed {
				t.Errorf("%s is %d bytes; want at most SegmentBytes (%d) and one record", seg, fileSize(t, seg), segBytes)
			}
		}
		if segBytes > 0 && len(segs) < 5 {
			t.Errorf("SegmentBytes %d: %d segments for 20 records of ~100 bytes; want them rolled", segBytes, len(segs))
		}
	}
}

// TestReplayTidiesSegments: at start, a torn tail is cut off the segment
// it ends (the record before it is replayed), and a segment every record of
// which was already retired is deleted, not kept.
func TestReplayTidiesSegments(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{FsyncInterval: 5 * time.Millisecond})
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"done":1}`), nil); err != nil {
		t.Fatal(err)
	}
	deliver(buf, nil)
	deadline := time.Now().Add(5 * time.Second)
	for { // the background loop writes the done record down
		s.mu.Lock()
		pendingDone := len(s.done)
		s.mu.Unlock()
		if pendingDone == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the done record was never written")
		}
		time.Sleep(5 * time.Millisecond)
	}
	die(s) // the fully retired segment stays on disk
	retired := segments(t, dir)

	// A second run leaves an owed record and a torn write after it.
	buf2 := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s2 := open(t, dir, buf2, Options{})
	if n, err := s2.Replay(context.Background()); n != 0 || err != nil {
		t.Fatalf("first restart replayed %d (%v); want 0", n, err)
	}
	for _, p := range retired {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s, every record of which was retired, is still there (%v)", p, err)
		}
	}
	if err := s2.PutWaiting(buffer.Key{Datasource: "ds"}, lines(`{"owed":1}`), nil); err != nil {
		t.Fatal(err)
	}
	die(s2)
	owed := segments(t, dir)
	if len(owed) != 1 {
		t.Fatalf("segments %v; want the one owed", owed)
	}
	whole := fileSize(t, owed[0])
	f, err := os.OpenFile(owed[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("torn-tail"))
	f.Close()

	buf3 := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s3 := open(t, dir, buf3, Options{})
	if n, err := s3.Replay(context.Background()); n != 1 || err != nil {
		t.Fatalf("second restart replayed %d (%v); want the owed event", n, err)
	}
	if got := fileSize(t, owed[0]); got != whole {
		t.Errorf("segment with a torn tail is %d bytes after replay; want it cut back to %d", got, whole)
	}
}
