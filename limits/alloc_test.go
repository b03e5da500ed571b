//go:build !race

package limits

import (
	"testing"
	"time"
)

// TestTakeAllocations guards the hot path: Take and Refund on an identity
// already tracked allocate nothing, admitted or refused.
func TestTakeAllocations(t *testing.T) {
	l := New(Options{})
	key := "client-0123456789abcdef"
	big := Limit{PerMinute: 1 << 40, PerDay: 1 << 50}
	mustTake(t, l, key, big, 1)
	if n := testing.AllocsPerRun(1000, func() { l.Take(key, big, 1) }); n != 0 {
		t.Errorf("Take admitted: %v allocs per run; want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() { l.Refund(key, 1) }); n != 0 {
		t.Errorf("Refund: %v allocs per run; want 0", n)
	}
	small := Limit{PerMinute: 1, PerDay: 1}
	if n := testing.AllocsPerRun(1000, func() { l.Take(key, small, 1) }); n != 0 {
		t.Errorf("Take refused: %v allocs per run; want 0", n)
	}
	clk := newClock(base.Add(30 * time.Second))
	l = New(Options{Now: clk.Now})
	mustTake(t, l, key, big, 1)
	clk.Add(time.Minute)
	if n := testing.AllocsPerRun(1000, func() { clk.Add(time.Second); l.Take(key, big, 1) }); n != 0 {
		t.Errorf("Take across windows: %v allocs per run; want 0", n)
	}
}
