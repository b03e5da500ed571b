package spool

import (
	"os"
	"slices"
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
