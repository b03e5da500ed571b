package buffer

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestHeldEntriesSurviveReuse: memory is reused only after every entry in
// it is released. Many producers write distinct events while a consumer
// holds a random share of what it takes for a while, releases the rest at
// once, and releases held entries in random order and in random pieces (as
// the flusher does after splitting a batch). Every entry must read exactly
// as it was written when it is released: if a slab were handed out again
// while part of it was still held, a later request would overwrite it.
func TestHeldEntriesSurviveReuse(t *testing.T) {
	const producers, perProducer = 4, 10_000
	b := New(Options{MaxEvents: 1 << 20, MaxBytes: 4 << 20}) // a tenth of what goes through
	want := func(p, i int) string {
		return fmt.Sprintf(`{"p":%d,"i":%d,"pad":"%s"}`, p, i, bytes.Repeat([]byte{'a' + byte(i%26)}, i%700))
	}
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range perProducer {
				l := want(p, i)
				for {
					err := b.Put(Key{Datasource: fmt.Sprint(p)}, [][]byte{[]byte(l), []byte(l)})
					if err == nil {
						break
					}
					if !errors.Is(err, ErrFull) {
						t.Errorf("Put: %v", err)
						return
					}
					runtime.Gosched() // the consumer frees room
				}
			}
		})
	}
	check := func(e Entry) {
		var p, i int
		if _, err := fmt.Sscanf(string(e.Data), `{"p":%d,"i":%d,`, &p, &i); err != nil {
			t.Fatalf("entry overwritten: %q", e.Data)
		}
		if l := want(p, i) + "\n"; string(e.Data) != l+l {
			t.Fatalf("entry overwritten:\n got %q\nwant %q", e.Data, l+l)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var held []Entry
	releaseSome := func(n int) {
		rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
		for _, e := range held[:n] {
			check(e)
			cut := bytes.IndexByte(e.Data, '\n') + 1 // release in two pieces
			b.Release(e.Key, 1, e.Data[:cut])
			b.Release(e.Key, 1, e.Data[cut:])
		}
		held = append(held[:0], held[n:]...)
	}
	seen := 0
	producing := make(chan struct{})
	go func() { wg.Wait(); close(producing) }()
	for done := false; !done; {
		select {
		case <-b.Ready():
		case <-producing:
			done = true
		}
		for _, e := range b.Take(nil) {
			seen++
			if rng.IntN(4) == 0 {
				held = append(held, e) // keep it a while, like a retried batch
				continue
			}
			check(e)
			b.Release(e.Key, e.Rows, e.Data)
			if len(held) > 200 {
				releaseSome(len(held) / 2)
			}
		}
	}
	for _, e := range b.Take(nil) {
		seen++
		held = append(held, e)
	}
	releaseSome(len(held))
	if seen != producers*perProducer {
		t.Fatalf("took %d entries; %d were stored", seen, producers*perProducer)
	}
	if s := b.Stats(); s.Events != 0 || s.Bytes != 0 {
		t.Fatalf("after releasing everything: %+v; want empty", s)
	}
}

// TestBurstMemoryIsGivenBack: after a burst is released, the slabs it needed
// are kept for a while (the next burst may come) and then let go, so the
// process does not keep its peak memory for good.
func TestBurstMemoryIsGivenBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 1 << 20, MaxBytes: 1 << 30})
		line := [][]byte{bytes.Repeat([]byte{'x'}, 10_000)}
		cycle := func(n int) {
			for range n {
				if err := b.Put(Key{}, line); err != nil {
					t.Fatal(err)
				}
			}
			for _, e := range b.Take(nil) {
				b.Release(e.Key, e.Rows, e.Data)
			}
		}
		cycle(3000) // ~30 MB
		burst := b.mem.slabBytes()
		if burst < 25<<20 {
			t.Fatalf("a 30 MB burst took %d bytes of slabs", burst)
		}
		cycle(10)
		if got := b.mem.slabBytes(); got != burst {
			t.Errorf("right after the burst: %d bytes of slabs; want the burst's %d kept", got, burst)
		}
		for range 3 {
			time.Sleep(peakWindow)
			cycle(10) // quiet traffic: 100 KB at a time, never filling a slab
		}
		if got, want := b.mem.slabBytes(), (minFreeSlabs+1)*slabSize; got > want {
			t.Errorf("minutes after the burst: %d bytes of slabs; want at most %d", got, want)
		}
	})
}

// TestSlabMemoryIsReused: a steady stream of requests through Put, Take and
// Release settles on a fixed set of slabs instead of asking for new memory.
func TestSlabMemoryIsReused(t *testing.T) {
	b := New(Options{MaxEvents: 1 << 20, MaxBytes: 1 << 30})
	line := [][]byte{bytes.Repeat([]byte{'x'}, 10_000)}
	var got []Entry
	cycle := func() {
		for range 500 { // ~5 MB: a few slabs
			if err := b.Put(Key{}, line); err != nil {
				t.Fatal(err)
			}
		}
		got = b.Take(got)
		for _, e := range got {
			b.Release(e.Key, e.Rows, e.Data)
		}
	}
	cycle()
	cycle() // the second may need one more slab: it starts in a part-used one
	b.mem.mu.Lock()
	made := b.mem.made
	b.mem.mu.Unlock()
	if made < 5 {
		t.Fatalf("%d slabs made for ~5 MB held at once; want at least 5", made)
	}
	for range 50 {
		cycle()
	}
	b.mem.mu.Lock()
	defer b.mem.mu.Unlock()
	if b.mem.made != made {
		t.Errorf("%d slabs after one cycle, %d after 50 more identical cycles; want them reused", made, b.mem.made)
	}
}

// TestSlabMemoryIsBounded: one key whose events are never released pins a
// little of every slab while another key flows. The slabs stop growing at the
// buffer's byte limit and later requests are still stored intact (in memory
// of their own), so a stuck datasource cannot make the buffer grow without
// bound.
func TestSlabMemoryIsBounded(t *testing.T) {
	const maxBytes = 8 * slabSize
	b := New(Options{MaxEvents: 1 << 20, MaxBytes: maxBytes})
	flowing := [][]byte{bytes.Repeat([]byte{'f'}, 50_000)}
	var stuck []Entry
	for i := range 2000 {
		if err := b.Put(Key{Datasource: "stuck"}, [][]byte{fmt.Appendf(nil, `{"i":%d}`, i)}); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
		if err := b.Put(Key{Datasource: "flowing"}, flowing); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
		for _, e := range b.Take(nil) {
			if e.Key.Datasource == "stuck" {
				stuck = append(stuck, e)
				continue
			}
			b.Release(e.Key, e.Rows, e.Data)
		}
	}
	if got := b.mem.slabBytes(); got > maxBytes {
		t.Errorf("slabs hold %d bytes; want at most the buffer's limit %d", got, maxBytes)
	}
	for i, e := range stuck {
		if want := fmt.Sprintf("{\"i\":%d}\n", i); string(e.Data) != want {
			t.Fatalf("stuck entry %d reads %q; want %q", i, e.Data, want)
		}
	}
}

// TestSmallBufferTakesNoSlab: a buffer limited below one slab never
// allocates one, so its memory stays within twice its limit too.
func TestSmallBufferTakesNoSlab(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 64 << 10})
	if err := b.Put(Key{}, lines(`{"a":1}`, `{"b":2}`)); err != nil {
		t.Fatal(err)
	}
	got := b.Take(nil)
	if len(got) != 1 || string(got[0].Data) != "{\"a\":1}\n{\"b\":2}\n" {
		t.Fatalf("got %+v; want the two lines", got)
	}
	if n := b.mem.slabBytes(); n != 0 {
		t.Errorf("a 64 KiB buffer holds %d bytes of slabs; want none", n)
	}
	b.Release(got[0].Key, got[0].Rows, got[0].Data)
	if s := b.Stats(); s.Events != 0 || s.Bytes != 0 {
		t.Errorf("after Release: %+v; want empty", s)
	}
}

// TestLargeEntries: entries larger than a slab, or than a quarter of one,
// are stored whole on the heap and read back byte-identical.
func TestLargeEntries(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 64 << 20})
	for _, n := range []int{slabSize / 4, slabSize/4 + 1, slabSize - 1, 2 * slabSize} {
		line := bytes.Repeat([]byte{'y'}, n)
		if err := b.Put(Key{}, [][]byte{line}); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		got := b.Take(nil)
		if len(got) != 1 || !bytes.Equal(got[0].Data, append(line, '\n')) {
			t.Fatalf("%d bytes: read back %d bytes", n, len(got[0].Data))
		}
		b.Release(got[0].Key, got[0].Rows, got[0].Data)
	}
}

// TestReleaseAcrossSlabsInOneCall: pieces from several slabs released in
// one call (as the flusher releases a batch) each go back to their own
// slab, so refilling the same amount needs no new slab.
func TestReleaseAcrossSlabsInOneCall(t *testing.T) {
	b := New(Options{MaxEvents: 1 << 20, MaxBytes: 64 << 20})
	line := [][]byte{bytes.Repeat([]byte{'z'}, 100_000)}
	fill := func() (Key, [][]byte, int) {
		var data [][]byte
		for range 30 { // ~3 MB: three slabs or more
			if err := b.Put(Key{Datasource: "ds"}, line); err != nil {
				t.Fatal(err)
			}
		}
		got := b.Take(nil)
		for _, e := range got {
			data = append(data, e.Data)
		}
		// Interleave slabs: last piece first, then the rest.
		data = append(data[len(data)-1:], data[:len(data)-1]...)
		return got[0].Key, data, len(got)
	}
	k, data, n := fill()
	b.Release(k, n, data...)
	b.mem.mu.Lock()
	made := b.mem.made
	b.mem.mu.Unlock()
	for range 5 {
		k, data, n = fill()
		b.Release(k, n, data...)
	}
	b.mem.mu.Lock()
	defer b.mem.mu.Unlock()
	if b.mem.made > made+1 {
		t.Errorf("%d slabs after the first cycle, %d after five more: released pieces did not free their slabs", made, b.mem.made)
	}
	if s := b.Stats(); s.Bytes != 0 || s.Events != 0 {
		t.Errorf("after releasing everything: %+v", s)
	}
}
