package spool

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// TestMaxBytesAtItsExactSize: SPOOL_MAX_BYTES is a limit on the bytes on
// disk, reached exactly and never passed: with room for exactly three
// requests, three are accepted, the fourth is refused with ErrFull, and
// tbproxy_spool_bytes shows the limit.
func TestMaxBytesAtItsExactSize(t *testing.T) {
	row := `{"pad":"xxxxxxxxxxxxxxxxxxxx"}`
	limit := headerLen + 3*framedLen("ds", row)
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s, _, reg := openObserved(t, t.TempDir(), buf, Options{MaxBytes: limit, FsyncInterval: time.Hour})
	for i := range 3 {
		if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(row), nil); err != nil {
			t.Fatalf("request %d of 3 that fit exactly: %v", i+1, err)
		}
	}
	if err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines(row), nil); !errors.Is(err, buffer.ErrFull) {
		t.Fatalf("a fourth: got %v; want ErrFull", err)
	}
	if got := metric(t, reg, "tbproxy_spool_bytes"); got != float64(limit) {
		t.Errorf("tbproxy_spool_bytes = %v; want the limit, %d", got, limit)
	}
	if got := buf.Len(); got != 3 {
		t.Errorf("%d requests buffered; want the 3 accepted", got)
	}
}

// TestRecordOverReadLimitRefused: a request whose record would be larger
// than replay reads back (1 GiB) is refused with 413's error before
// anything is written, instead of acknowledged and then lost at replay.
func TestRecordOverReadLimitRefused(t *testing.T) {
	dir := t.TempDir()
	buf := buffer.New(buffer.Options{MaxEvents: 1 << 20, MaxBytes: 4 << 30})
	s := open(t, dir, buf, Options{})
	line := make([]byte, 1<<20) // every line shares it: 1 GiB and more without the memory
	lines := make([][]byte, 1<<10)
	for i := range lines {
		lines[i] = line
	}
	before := diskBytes(t, dir)
	err := s.PutWaiting(buffer.Key{Datasource: "ds"}, lines, nil)
	var tl *buffer.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(tl.Limit, "1 GiB") {
		t.Fatalf("PutWaiting of a 1 GiB request: %v; want a TooLargeError naming the limit", err)
	}
	if after := diskBytes(t, dir); after != before || buf.Len() != 0 {
		t.Errorf("spool grew from %d to %d bytes, buffer holds %d; want nothing written", before, after, buf.Len())
	}
}
