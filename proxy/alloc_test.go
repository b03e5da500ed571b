//go:build !race

package proxy

import (
	"testing"

	"github.com/tbproxy/tbproxy/buffer"
)

// TestAcceptPathAllocations guards the hot path: splitting and validating
// allocate nothing, and in steady state (requests stored, taken and
// released) storing a request allocates nothing either, however many events
// it holds: its lines are copied into reused buffer memory.
func TestAcceptPathAllocations(t *testing.T) {
	for _, k := range []int{1, 100} {
		body := benchBody(k)
		lines := make([][]byte, 0, k)
		if n := testing.AllocsPerRun(100, func() {
			lines, _ = splitLines(lines[:0], body)
		}); n != 0 {
			t.Errorf("splitLines with %d events: %v allocs per run; want 0", k, n)
		}
		buf := buffer.New(buffer.Options{MaxEvents: 1 << 30, MaxBytes: 1 << 40})
		key := buffer.Key{Datasource: "ds"}
		var taken []buffer.Entry
		if n := testing.AllocsPerRun(10_000, func() {
			if err := buf.Put(key, lines); err != nil {
				t.Fatal(err)
			}
			taken = buf.Take(taken)
			for _, e := range taken {
				buf.Release(e.Rows, e.Data)
			}
		}); n != 0 {
			t.Errorf("Put, Take and Release with %d events: %v allocs per run; want 0", k, n)
		}
	}
}
