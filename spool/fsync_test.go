package spool

import (
	"fmt"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// fsyncScenario runs what exercises every place the spool may sync: five
// requests in segments of two (two rolls), the first delivered, so its
// sealed segment gets a done record. It returns the spool, open, and the
// number of fsyncs made so far.
func fsyncScenario(t *testing.T, dir string, mode Fsync) (*Spool, func() float64) {
	t.Helper()
	row := func(i int) string { return fmt.Sprintf(`{"i":%d}`, i) }
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s, _, reg := openObserved(t, dir, buf, Options{
		Fsync:         mode,
		SegmentBytes:  headerLen + 2*framedLen("ds", row(0)),
		FsyncInterval: time.Hour, // no background ticks: every sync below is caused by the test
	})
	count := func() float64 { return fsyncs(t, reg) }
	for i := range 5 {
		before := count()
		put(t, s, "ds", row(i))
		if mode == FsyncAlways && count() <= before {
			t.Errorf("FsyncAlways: request %d acknowledged with no fsync since it was written", i)
		}
	}
	for _, e := range buf.Take(nil) {
		if string(e.Data) == row(0)+"\n" {
			finish(buf, e, nil)
		}
	}
	if n := len(segments(t, dir)); n != 3 {
		t.Fatalf("%d segments; want 3", n)
	}
	return s, count
}

// TestFsyncNeverSyncsOnlyAtClose: with SPOOL_FSYNC=never the spool leaves
// syncing to the kernel while it serves (no fsync at a roll, none for a
// done record); the one fsync is Close's. What was written is replayed.
func TestFsyncNeverSyncsOnlyAtClose(t *testing.T) {
	dir := t.TempDir()
	s, count := fsyncScenario(t, dir, FsyncNever)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := count(); got != 1 {
		t.Errorf("FsyncNever: %v fsyncs; want only Close's", got)
	}
	if _, rows := replayed(t, dir, Options{}); len(rows) != 4 {
		t.Errorf("replayed %q; want the 4 undelivered", rows)
	}
}

// TestFsyncAlwaysSyncsBeforeAcknowledging: with SPOOL_FSYNC=always every
// request is acknowledged only after an fsync that followed its write, and
// the done record Close writes into a sealed segment is synced too (a
// power loss then replays no delivered row).
func TestFsyncAlwaysSyncsBeforeAcknowledging(t *testing.T) {
	dir := t.TempDir()
	s, count := fsyncScenario(t, dir, FsyncAlways)
	before := count()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := count() - before; got < 2 {
		t.Errorf("Close made %v fsyncs; want 2: the sealed segment's done record and the current segment", got)
	}
	if _, rows := replayed(t, dir, Options{}); len(rows) != 4 {
		t.Errorf("replayed %q; want the 4 undelivered", rows)
	}
}

// TestFsyncIntervalSyncsWithoutARoll: with SPOOL_FSYNC=interval a request
// is synced within the interval although its segment is far from full:
// the window a power loss can take is the interval, not a segment.
func TestFsyncIntervalSyncsWithoutARoll(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s, _, reg := openObserved(t, t.TempDir(), buf, Options{Fsync: FsyncInterval, FsyncInterval: 2 * time.Millisecond})
	put(t, s, "ds", `{"a":1}`)
	deadline := time.Now().Add(5 * time.Second)
	for fsyncs(t, reg) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("FsyncInterval: no fsync 5s after a write")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
