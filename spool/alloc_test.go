//go:build !race

package spool

import (
	"bytes"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// TestPutAllocations guards the accept path through the spool: in steady
// state (requests written, taken, delivered and retired) a request costs
// the waiter the spool makes for it (a struct and a channel) and that
// waiter's callback, whatever its size: its record is encoded into a
// pooled buffer, and done records into a reused one.
func TestPutAllocations(t *testing.T) {
	buf := buffer.New(buffer.Options{MaxEvents: 1 << 20, MaxBytes: 1 << 30})
	s := open(t, t.TempDir(), buf, Options{Fsync: FsyncNever, FsyncInterval: time.Hour, SegmentBytes: 1 << 40, MaxBytes: 1 << 40})
	key := buffer.Key{Datasource: "ds"}
	var taken []buffer.Entry
	for _, size := range []int{100, 64 << 10} {
		rows := [][]byte{append(append([]byte(`{"pad":"`), bytes.Repeat([]byte{'x'}, size)...), `"}`...)}
		n := testing.AllocsPerRun(100, func() {
			if err := s.PutWaiting(key, rows, nil); err != nil {
				t.Fatal(err)
			}
			taken = buf.Take(taken)
			for _, e := range taken {
				e.Waiter.AddPart()
				e.Waiter.Finish(e.Rows, 0, nil)
				buf.Release(e.Key, e.Rows, e.Data)
			}
		})
		if n > 3 {
			t.Errorf("a request of %d bytes: %v allocs; want at most 3 (the waiter, its channel and its callback)", size, n)
		}
	}
}
