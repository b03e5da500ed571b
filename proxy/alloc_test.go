//go:build !race

package proxy

import (
	"testing"

	"github.com/tbproxy/tbproxy/buffer"
)

// TestAcceptPathAllocations guards the hot path: splitting and validating
// allocate nothing, and storing a request costs one allocation (the copy of
// its lines) however many events it holds.
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
		if n := testing.AllocsPerRun(100, func() {
			if err := buf.Put(key, lines); err != nil {
				t.Fatal(err)
			}
		}); n != 1 {
			t.Errorf("Put with %d events: %v allocs per run; want 1 per request", k, n)
		}
	}
}
