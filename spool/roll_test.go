package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// TestSegmentFilledToExactlySegmentBytes: a segment takes requests until
// it is exactly SPOOL_SEGMENT_BYTES large; the next request starts a new
// one.
func TestSegmentFilledToExactlySegmentBytes(t *testing.T) {
	dir := t.TempDir()
	row := `{"pad":"xxxxxxxxxxxxxxxxxxxx"}`
	segBytes := headerLen + 3*framedLen("ds", row)
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s := open(t, dir, buf, Options{SegmentBytes: segBytes, FsyncInterval: time.Hour})
	for range 4 {
		put(t, s, "ds", row)
	}
	segs := segments(t, dir)
	if len(segs) != 2 {
		t.Fatalf("segments %v; want a full one and the one the fourth request started", segs)
	}
	if got := fileSize(t, segs[0]); got != segBytes {
		t.Errorf("the first segment is %d bytes; want exactly SegmentBytes, %d (three requests)", got, segBytes)
	}
	if got, want := fileSize(t, segs[1]), headerLen+framedLen("ds", row); got != want {
		t.Errorf("the second segment is %d bytes; want %d (one request)", got, want)
	}
}

// TestDeliveredSegmentDeletedAtRoll: a segment every request of which was
// delivered while it was still the current one is deleted as soon as the
// next one starts, so a proxy that keeps up leaves no files behind and
// tbproxy_spool_bytes stays at what is on disk.
func TestDeliveredSegmentDeletedAtRoll(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s, _, reg := openObserved(t, dir, buf, Options{SegmentBytes: 1, FsyncInterval: time.Hour}) // one request a segment
	for i := range 10 {
		put(t, s, "ds", fmt.Sprintf(`{"i":%d}`, i))
		if n := deliver(buf, nil); n != 1 {
			t.Fatalf("delivered %d; want 1", n)
		}
	}
	if segs := segments(t, dir); len(segs) != 1 {
		t.Errorf("%d segment files after 10 requests were delivered; want only the current one", len(segs))
	}
	if got, want := metric(t, reg, "tbproxy_spool_bytes"), float64(diskBytes(t, dir)); got != want {
		t.Errorf("tbproxy_spool_bytes = %v; want the %v bytes on disk", got, want)
	}
}

// TestDeliveredJustBeforeARollNotReplayed: a request delivered while its
// segment was current, whose done record had not been written yet when the
// segment rolled, is still not replayed after a clean restart; the
// undelivered request beside it is.
func TestDeliveredJustBeforeARollNotReplayed(t *testing.T) {
	dir := t.TempDir()
	row := func(s string) string { return `{"r":"` + s + `"}` }
	segBytes := headerLen + 2*framedLen("ds", row("a"))
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	// No background write-down: the done record can only go with the roll.
	s := open(t, dir, buf, Options{SegmentBytes: segBytes, FsyncInterval: time.Hour})
	put(t, s, "ds", row("a"))
	put(t, s, "ds", row("b"))
	for _, e := range buf.Take(nil) {
		if string(e.Data) == row("b")+"\n" {
			finish(buf, e, nil)
		}
	}
	put(t, s, "ds", row("c")) // rolls: a and b's segment is full
	if n := len(segments(t, dir)); n != 2 {
		t.Fatalf("%d segments; want the rolled one and the current one", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, rows := replayed(t, dir, Options{})
	if want := []string{row("a"), row("c")}; !slices.Equal(rows, want) {
		t.Errorf("replayed %q; want %q", rows, want)
	}
}

// TestVanishedSegmentReplacedWithoutFalseAlarm: when the current segment is
// deleted behind the spool's back, the operator reads one error saying so,
// and no claim that requests are refused, since the next segment started;
// requests accepted afterwards survive a restart.
func TestVanishedSegmentReplacedWithoutFalseAlarm(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s, logs, _ := openObserved(t, dir, buf, Options{FsyncInterval: 5 * time.Millisecond})
	put(t, s, "ds", `{"a":1}`)
	segs := segments(t, dir)
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	logs.waitFor(t, "the current spool segment vanished or was replaced")
	put(t, s, "ds", `{"b":2}`) // after the new segment started: it is started under the same lock
	if r, ok := logs.find("cannot start a new spool segment"); ok {
		t.Errorf("logged %q although the new segment started", r.Message)
	}
	die(s)
	if _, rows := replayed(t, dir, Options{}); !slices.Equal(rows, []string{`{"b":2}`}) {
		t.Errorf("replayed %q; want the request accepted after the new segment started", rows)
	}
}

// TestFailedRollRetriedInTheBackground: when the current segment vanishes
// and the next one cannot be started either (its names taken), the spool
// tries again on its own, without waiting for a request, and tells the
// operator once it writes to a new segment again.
func TestFailedRollRetriedInTheBackground(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s, logs, _ := openObserved(t, dir, buf, Options{FsyncInterval: 5 * time.Millisecond})
	put(t, s, "ds", `{"a":1}`)
	breakNextRoll(t, s, dir)
	logs.waitFor(t, "cannot start a new spool segment")
	logs.waitFor(t, "spool writing to a new segment again")
	put(t, s, "ds", `{"b":2}`)
	die(s)
	if _, rows := replayed(t, dir, Options{}); !slices.Equal(rows, []string{`{"b":2}`}) {
		t.Errorf("replayed %q; want the request accepted after the new segment started", rows)
	}
}

// breakNextRoll deletes s's current segment, so the next write must roll,
// and takes every name that roll could use, so it fails.
func breakNextRoll(t *testing.T, s *Spool, dir string) {
	t.Helper()
	s.mu.Lock()
	first, cur := s.nextSeq, s.cur.path
	s.mu.Unlock()
	for seq := first; seq < first+maxTakenNames; seq++ {
		if err := os.Mkdir(filepath.Join(dir, fmt.Sprintf("seg-%016d.spool", seq)), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(cur); err != nil {
		t.Fatal(err)
	}
}

// TestSealedSegmentThatCannotBeSynced: when the file of a segment a roll
// sealed cannot be synced and closed off the lock (its handle closed under
// the spool here), the failure is counted and the operator reads one error
// naming the segment, where it used to vanish unsaid.
func TestSealedSegmentThatCannotBeSynced(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	s, logs, reg := openObserved(t, dir, buf, Options{SegmentBytes: 1, FsyncInterval: time.Hour}) // one request a segment
	put(t, s, "ds", `{"a":1}`)
	s.mu.Lock()
	f, path := s.cur.f, s.cur.path
	s.mu.Unlock()
	f.Close()
	put(t, s, "ds", `{"b":2}`) // rolls: the sealed segment is synced and closed in the background
	const msg = "cannot sync or close a sealed spool segment"
	r := logs.waitFor(t, msg)
	if r.Level != slog.LevelError {
		t.Errorf("logged %q at %v; want an error", r.Message, r.Level)
	}
	if got, _ := attr(r, "path"); got.String() != path {
		t.Errorf("logged path %q; want the sealed segment's, %q", got, path)
	}
	if v, _ := attr(r, "err"); !errors.Is(asError(v), os.ErrClosed) {
		t.Errorf("logged err %v; want the failed sync's", v)
	}
	if got := metric(t, reg, "tbproxy_spool_write_errors_total"); got != 1 {
		t.Errorf("tbproxy_spool_write_errors_total = %v; want 1", got)
	}
}
