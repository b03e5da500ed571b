package spool

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// TestUndeletableSegmentAcrossRestarts: a delivered segment that cannot be
// deleted (chattr +i) costs one counted write error and one error line,
// not one per retry, and stays counted in tbproxy_spool_bytes; restarts while it stays undeletable replay none of
// its rows, leave no stray files, and each counts and logs it once; once
// it can be deleted, a restart deletes it and the list of retired segments
// with it.
func TestUndeletableSegmentAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 1, FsyncInterval: time.Hour} // one request a segment; no background retries
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s, logs, reg := openObserved(t, dir, buf, opts)
	put(t, s, "ds", `{"delivered":1}`)
	put(t, s, "ds", `{"owed":2}`)
	segs := segments(t, dir)
	if len(segs) != 2 {
		t.Fatalf("segments %v; want 2", segs)
	}
	stuck := segs[0]
	chattr(t, "+i", stuck)
	for _, e := range buf.Take(nil) {
		if string(e.Data) == `{"delivered":1}`+"\n" {
			finish(buf, e, nil)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stuck); err != nil {
		t.Fatalf("the immutable segment is gone: %v", err)
	}
	if got := metric(t, reg, "tbproxy_spool_write_errors_total"); got != 1 {
		t.Errorf("tbproxy_spool_write_errors_total = %v; want 1, the failed deletion; logged %q", got, logs.atLeast(slog.LevelWarn))
	}
	if r, ok := logs.find("cannot note a retired spool segment"); ok {
		t.Errorf("logged %q although the retired list was written", r.Message)
	}
	// Close tried to delete it once more, and could not: it is still
	// counted, and not reported deleted.
	if r, ok := logs.find("deleted a delivered spool segment on a later try"); ok {
		t.Errorf("logged %q while the segment is still on disk", r.Message)
	}
	if got, want := metric(t, reg, "tbproxy_spool_bytes"), float64(diskBytes(t, dir)); got != want {
		t.Errorf("tbproxy_spool_bytes = %v; want the %v bytes still on disk", got, want)
	}

	// Two restarts while it is stuck: neither replays its delivered row.
	for run := range 2 {
		s, rows := replayed(t, dir, opts)
		if !slices.Equal(rows, []string{`{"owed":2}`}) {
			t.Fatalf("restart %d replayed %q; want only the owed row", run+1, rows)
		}
		if names := dirNames(t, dir); has(names, retiredName+".tmp") || !has(names, retiredName) {
			t.Errorf("restart %d: spool directory holds %q; want the list of retired segments and no temporary file", run+1, names)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// A restart's operator hears of it too, once: its counter starts at 0.
	s, logs, reg = openObserved(t, dir, buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20}), opts)
	const msg = "cannot delete delivered spool segment; will retry"
	if got := logs.atLeast(slog.LevelWarn); !slices.Equal(got, []string{"ERROR " + msg}) {
		t.Errorf("a restart logged %q; want one error, %q", got, msg)
	}
	r, _ := logs.find(msg)
	if path, _ := attr(r, "path"); path.String() != stuck {
		t.Errorf("logged path %q; want the stuck segment's, %q", path, stuck)
	}
	if got := metric(t, reg, "tbproxy_spool_write_errors_total"); got != 1 {
		t.Errorf("a restart's tbproxy_spool_write_errors_total = %v; want 1, the failed deletion", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	chattr(t, "-i", stuck)
	s, rows := replayed(t, dir, opts)
	if !slices.Equal(rows, []string{`{"owed":2}`}) {
		t.Fatalf("last restart replayed %q; want only the owed row", rows)
	}
	if names := dirNames(t, dir); has(names, filepath.Base(stuck)) || has(names, retiredName) {
		t.Errorf("spool directory holds %q once the segment could be deleted; want it and the retired list gone", names)
	}
	s.Close()
}

// TestRetiredListThatCannotBeRewritten: when the list of retired segments
// cannot be rewritten at start (chattr +i), the operator is told, and no
// new segment takes a number the list still names: a restart would delete
// such a segment, acknowledged rows and all, unreplayed.
func TestRetiredListThatCannotBeRewritten(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, retiredName)
	if err := os.WriteFile(list, []byte("5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	chattr(t, "+i", list)
	opts := Options{SegmentBytes: 1, FsyncInterval: time.Hour} // one request a segment
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s, logs, _ := openObserved(t, dir, buf, opts)
	if _, ok := logs.find("cannot rewrite the spool's list of retired segments"); !ok {
		t.Errorf("no error about the list; logged %q", logs.atLeast(slog.LevelWarn))
	}
	want := []string{`{"r":1}`, `{"r":2}`, `{"r":3}`, `{"r":4}`}
	for _, row := range want {
		put(t, s, "ds", row)
	}
	die(s)
	if _, rows := replayed(t, dir, opts); !slices.Equal(rows, want) {
		t.Errorf("replayed %q; want every acknowledged row, %q", rows, want)
	}
}
