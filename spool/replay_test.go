package spool

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// TestReplayWaitsForRoom: a restart owing more than the buffer holds
// replays it all, oldest first, as the flusher makes room.
func TestReplayWaitsForRoom(t *testing.T) {
	dir := t.TempDir()
	opts := Options{FsyncInterval: time.Hour}
	s := open(t, dir, buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20}), opts)
	want := []string{`{"r":1}`, `{"r":2}`, `{"r":3}`, `{"r":4}`}
	for _, row := range want {
		put(t, s, "ds", row)
	}
	die(s)

	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s2 := open(t, dir, buf, opts)
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := s2.Replay(context.Background())
		done <- result{n, err}
	}()
	var got []string
	timeout := time.After(poll.Timeout)
	for r := (result{n: -1}); r.n < 0; { // the flusher: one row of room at a time
		select {
		case <-timeout:
			t.Fatalf("Replay still waiting after %s, with %q replayed", poll.Timeout, got)
		case <-buf.Ready():
			for _, e := range buf.Take(nil) {
				got = append(got, strings.TrimSuffix(string(e.Data), "\n"))
				finish(buf, e, nil)
			}
		case r = <-done:
			if r.n != len(want) || r.err != nil {
				t.Fatalf("Replay: got %d, %v; want %d, nil", r.n, r.err, len(want))
			}
		}
	}
	for _, e := range buf.Take(nil) { // the last row may come after Replay returned
		got = append(got, strings.TrimSuffix(string(e.Data), "\n"))
	}
	if !slices.Equal(got, want) {
		t.Errorf("replayed %q; want %q, oldest first", got, want)
	}
}

// TestReplayStopsWithItsContext: a replay waiting for room returns when
// its context ends; what the buffer did not deliver stays owed.
func TestReplayStopsWithItsContext(t *testing.T) {
	dir := t.TempDir()
	opts := Options{FsyncInterval: time.Hour}
	s := open(t, dir, buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20}), opts)
	put(t, s, "ds", `{"r":1}`)
	put(t, s, "ds", `{"r":2}`)
	die(s)

	buf := buffer.New(buffer.Options{MaxEvents: 1, MaxBytes: 1 << 20})
	s2 := open(t, dir, buf, opts)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n, err := s2.Replay(ctx)
	if n > 1 || !errors.Is(err, context.Canceled) {
		t.Fatalf("Replay: got %d, %v; want at most 1 (all that fits), context.Canceled", n, err)
	}
	die(s2)
	if got := buf.Take(nil); len(got) > 1 || (len(got) == 1 && string(got[0].Data) != `{"r":1}`+"\n") {
		t.Errorf("buffered %+v; want at most the first row", got)
	}
	if _, rows := replayed(t, dir, opts); !slices.Equal(rows, []string{`{"r":1}`, `{"r":2}`}) {
		t.Errorf("the next restart replayed %q; want both rows, still owed", rows)
	}
}
