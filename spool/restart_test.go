package spool

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
)

// TestReplayInAcceptanceOrderAcrossRestarts: rows still owed after two
// crashes are replayed in the order they were accepted, even when the
// first run's delivered segments were deleted and left their numbers free:
// the second run's segments still come after the first run's.
func TestReplayInAcceptanceOrderAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 1, FsyncInterval: time.Hour} // one request a segment
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s := open(t, dir, buf, opts)
	for _, row := range []string{`{"r":1}`, `{"r":2}`, `{"r":3}`, `{"r":4}`} {
		put(t, s, "ds", row)
	}
	for _, e := range buf.Take(nil) { // the first three are delivered, their segments deleted
		if string(e.Data) != `{"r":4}`+"\n" {
			finish(buf, e, nil)
		}
	}
	die(s)
	if n := len(segments(t, dir)); n != 1 {
		t.Fatalf("%d segments after the first run; want the one still owed", n)
	}

	s2, rows := replayed(t, dir, opts)
	if !slices.Equal(rows, []string{`{"r":4}`}) {
		t.Fatalf("first restart replayed %q; want r4", rows)
	}
	put(t, s2, "ds", `{"r":5}`)
	put(t, s2, "ds", `{"r":6}`)
	die(s2)

	_, rows = replayed(t, dir, opts)
	if want := []string{`{"r":4}`, `{"r":5}`, `{"r":6}`}; !slices.Equal(rows, want) {
		t.Errorf("second restart replayed %q; want %q, oldest first", rows, want)
	}
}

// TestTornTailAccounting: a segment that ends in a torn write (a crash in
// the middle of it) is cut back to its last whole record, which is
// replayed; the operator sees the cut counted as corrupt, a warning naming
// the bytes cut, and tbproxy_spool_bytes equal to what is on disk, before
// and after the rows are delivered.
func TestTornTailAccounting(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{FsyncInterval: time.Hour})
	put(t, s, "ds", `{"a":1}`)
	put(t, s, "ds", `{"b":2}`)
	die(s)
	segs := segments(t, dir)
	if len(segs) != 1 {
		t.Fatalf("segments %v; want 1", segs)
	}
	whole := fileSize(t, segs[0])
	torn := appendData(nil, s.sync, buffer.Key{Datasource: "ds"}, lines(`{"torn":3}`), false, 0)
	torn = torn[:len(torn)-3] // the write was interrupted 3 bytes short
	f, err := os.OpenFile(segs[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(torn); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	buf2 := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s2, logs, reg := openObserved(t, dir, buf2, Options{FsyncInterval: time.Hour})
	if got, want := metric(t, reg, "tbproxy_spool_segments"), float64(len(segments(t, dir))); got != want {
		t.Errorf("before replay: tbproxy_spool_segments = %v; want the %v files on disk", got, want)
	}
	if got, want := metric(t, reg, "tbproxy_spool_bytes"), float64(diskBytes(t, dir)); got != want {
		t.Errorf("before replay: tbproxy_spool_bytes = %v; want the %v bytes on disk", got, want)
	}
	if n, err := s2.Replay(context.Background()); n != 2 || err != nil {
		t.Fatalf("replayed %d (%v); want the 2 whole records", n, err)
	}
	if got := fileSize(t, segs[0]); got != whole {
		t.Errorf("segment is %d bytes after replay; want it cut back to %d", got, whole)
	}
	if got := metric(t, reg, "tbproxy_spool_corrupt_records_total"); got != 1 {
		t.Errorf("tbproxy_spool_corrupt_records_total = %v; want the torn record counted", got)
	}
	r, ok := logs.find("spool segment ended in a torn record; cut it off")
	if !ok {
		t.Errorf("no warning about the cut; logged %q", logs.atLeast(slog.LevelWarn))
	} else if v, _ := attr(r, "bytes"); v.Int64() != int64(len(torn)) {
		t.Errorf("the warning says %v bytes were cut; want %d", v, len(torn))
	}
	if _, ok := logs.find("cannot cut the torn tail"); ok {
		t.Errorf("logged a failure to cut a tail that was cut: %q", logs.atLeast(slog.LevelWarn))
	}
	if got, want := metric(t, reg, "tbproxy_spool_bytes"), float64(diskBytes(t, dir)); got != want {
		t.Errorf("after replay: tbproxy_spool_bytes = %v; want the %v bytes on disk", got, want)
	}
	deliver(buf2, nil)
	if left := segments(t, dir); len(left) != 1 || left[0] == segs[0] {
		t.Fatalf("after delivery: segments %v; want only the current one", left)
	}
	if got := metric(t, reg, "tbproxy_spool_bytes"); got != headerLen {
		t.Errorf("after delivery: tbproxy_spool_bytes = %v; want %d, the empty current segment", got, headerLen)
	}
}

// TestDanglingSymlinkNamedLikeASegment: a symlink named like a segment
// whose target is gone is skipped and counted; the segments beside it are
// replayed.
func TestDanglingSymlinkNamedLikeASegment(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{})
	put(t, s, "ds", `{"kept":1}`)
	die(s)
	if err := os.Symlink(filepath.Join(dir, "gone"), filepath.Join(dir, "seg-0000000000000099.spool")); err != nil {
		t.Fatal(err)
	}
	s2, rows := replayed(t, dir, Options{})
	if len(rows) != 1 {
		t.Fatalf("replayed %q; want the real segment's event", rows)
	}
	if got := testutil.ToFloat64(s2.m.corrupt); got != 1 {
		t.Errorf("tbproxy_spool_corrupt_records_total = %v; want the skipped entry counted", got)
	}
}

// TestCleanRunsLogNothingAlarming: a first start, a clean shutdown with
// rows still owed, and a restart that replays and delivers them log no
// warning and no error: an operator reading the logs sees nothing to act
// on.
func TestCleanRunsLogNothingAlarming(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s, logs, _ := openObserved(t, dir, buf, Options{SegmentBytes: 1, FsyncInterval: time.Hour})
	for _, row := range []string{`{"a":1}`, `{"b":2}`, `{"c":3}`} {
		put(t, s, "ds", row)
	}
	for _, e := range buf.Take(nil) {
		if string(e.Data) == `{"a":1}`+"\n" {
			finish(buf, e, nil)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := logs.atLeast(slog.LevelWarn); len(got) > 0 {
		t.Errorf("first run logged %q; want no warnings or errors", got)
	}

	buf2 := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s2, logs2, _ := openObserved(t, dir, buf2, Options{FsyncInterval: time.Hour})
	if n, err := s2.Replay(context.Background()); n != 2 || err != nil {
		t.Fatalf("replayed %d (%v); want the 2 owed", n, err)
	}
	deliver(buf2, nil)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := logs2.atLeast(slog.LevelWarn); len(got) > 0 {
		t.Errorf("restart logged %q; want no warnings or errors", got)
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{lockName}) {
		t.Errorf("spool directory holds %q after everything was delivered; want only %s", names, lockName)
	}
}

// TestLockHeldWithoutPid: a directory locked by a process that wrote no pid
// (flock(1), or a tbproxy between taking the lock and writing its pid) is
// refused with a message that says the holder is unknown, not "pid ".
func TestLockHeldWithoutPid(t *testing.T) {
	dir := t.TempDir()
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	_, err = Open(buf, Options{Dir: dir}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "in use by another process (unknown pid)") {
		t.Fatalf("got %v; want it refused, naming an unknown pid", err)
	}
}
