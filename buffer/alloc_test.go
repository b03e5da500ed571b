//go:build !race

package buffer

import "testing"

// TestPutReleaseAllocs: in steady state a Put, Take and Release cycle
// allocates nothing, with the fair share on (for a stream already tracked,
// beside another) or off.
func TestPutReleaseAllocations(t *testing.T) {
	for _, share := range []float64{0, 0.5} {
		b := New(Options{MaxEvents: 1000, MaxBytes: 4 << 20, StreamShare: share})
		a, other := Key{Datasource: "a"}, Key{Datasource: "b"}
		in := lines(`{"a":1}`, `{"b":2}`)
		if err := b.Put(other, in); err != nil { // another stream, holding
			t.Fatal(err)
		}
		var got []Entry
		cycle := func() {
			if err := b.Put(a, in); err != nil {
				t.Fatal(err)
			}
			got = b.Take(got)
			for _, e := range got {
				if e.Key == a {
					b.Release(e.Key, e.Rows, e.Data)
				}
			}
		}
		cycle() // tracks a and sizes the queues
		cycle()
		if n := testing.AllocsPerRun(1000, cycle); n != 0 {
			t.Errorf("share %v: got %v allocations per Put, Take and Release; want 0", share, n)
		}
	}
}
