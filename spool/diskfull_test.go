package spool

import (
	"errors"
	"log/slog"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// TestDoneRecordRetriedAfterDiskFull: a done record that cannot be
// appended to its sealed segment because the disk is full (/dev/full
// stands in for the segment's file) is logged and kept, and written once
// there is room again, so a restart replays no delivered row.
func TestDoneRecordRetriedAfterDiskFull(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	dir := t.TempDir()
	row := func(s string) string { return `{"r":"` + s + `"}` }
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s, logs, _ := openObserved(t, dir, buf, Options{
		SegmentBytes:  headerLen + 2*framedLen("ds", row("a")), // two requests a segment
		FsyncInterval: 2 * time.Millisecond,
	})
	put(t, s, "ds", row("a"))
	put(t, s, "ds", row("b"))
	put(t, s, "ds", row("c")) // seals a and b's segment
	segs := segments(t, dir)
	if len(segs) != 2 {
		t.Fatalf("segments %v; want 2", segs)
	}
	sealed, kept := segs[0], segs[0]+".kept"
	if err := os.Rename(sealed, kept); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/full", sealed); err != nil {
		t.Fatal(err)
	}
	for _, e := range buf.Take(nil) {
		if string(e.Data) == row("a")+"\n" {
			finish(buf, e, nil)
		}
	}
	logs.waitFor(t, "cannot write a spool done record; will retry")
	if err := os.Rename(kept, sealed); err != nil { // room again: the file is back in place of the full disk
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, rows := replayed(t, dir, Options{}); !slices.Equal(rows, []string{row("b"), row("c")}) {
		t.Errorf("replayed %q; want only the undelivered b and c", rows)
	}
}

// TestCurrentSegmentDoneRecordOnFullDisk: a done record that cannot be
// written into the current segment because the disk is full (a /dev/full
// handle stands in for the segment's) costs one counted write error and one
// error line naming the segment and the error, and is kept and written on
// the next try, so a restart replays no delivered row.
func TestCurrentSegmentDoneRecordOnFullDisk(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	// No background write-down: the test writes the done record down itself.
	s, logs, reg := openObserved(t, dir, buf, Options{FsyncInterval: time.Hour})
	put(t, s, "ds", `{"delivered":1}`)
	put(t, s, "ds", `{"owed":2}`)
	for _, e := range buf.Take(nil) {
		if string(e.Data) == `{"delivered":1}`+"\n" {
			finish(buf, e, nil)
		}
	}
	s.mu.Lock()
	cur, f := s.cur, s.cur.f
	cur.f = full // the disk is full
	s.flushDoneLocked()
	cur.f = f // room again
	s.mu.Unlock()

	const msg = "cannot write a spool done record; will retry"
	if got := metric(t, reg, "tbproxy_spool_write_errors_total"); got != 1 {
		t.Errorf("tbproxy_spool_write_errors_total = %v; want 1", got)
	}
	if got := logs.atLeast(slog.LevelWarn); !slices.Equal(got, []string{"ERROR " + msg}) {
		t.Fatalf("logged %q; want one error, %q", got, msg)
	}
	r, _ := logs.find(msg)
	if path, _ := attr(r, "path"); path.String() != cur.path {
		t.Errorf("logged path %q; want the current segment's, %q", path, cur.path)
	}
	if v, _ := attr(r, "err"); !errors.Is(asError(v), syscall.ENOSPC) {
		t.Errorf("logged err %v; want the write's ENOSPC", v)
	}

	s.mu.Lock()
	s.flushDoneLocked() // the next try, as the background loop makes it
	s.mu.Unlock()
	if got := metric(t, reg, "tbproxy_spool_write_errors_total"); got != 1 {
		t.Errorf("tbproxy_spool_write_errors_total = %v after a try that worked; want still 1", got)
	}
	die(s) // nothing more is written: the done record is on disk only if the retry wrote it
	if _, rows := replayed(t, dir, Options{}); !slices.Equal(rows, []string{`{"owed":2}`}) {
		t.Errorf("replayed %q; want only the owed row", rows)
	}
}

// asError returns the error a log attribute holds, or nil.
func asError(v slog.Value) error {
	err, _ := v.Any().(error)
	return err
}
