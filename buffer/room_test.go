package buffer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fill puts n one-line entries for key into b, failing the test if one is
// refused.
func fill(t *testing.T, b *Buffer, key Key, n int) {
	t.Helper()
	for i := range n {
		if err := b.Put(key, lines(fmt.Sprintf(`{"fill":%d}`, i))); err != nil {
			t.Fatalf("fill Put %d: %v", i, err)
		}
	}
}

// putWait runs PutWait on its own goroutine and returns where its result
// arrives.
func putWait(ctx context.Context, b *Buffer, key Key, line string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- b.PutWait(ctx, key, lines(line), nil) }()
	return done
}

// returned reports whether a result has arrived on done, and which.
func returned(done <-chan error) (error, bool) {
	select {
	case err := <-done:
		return err, true
	default:
		return nil, false
	}
}

// TestPutWaitBlocksUntilRelease: a PutWait on a full buffer waits, and
// stores its lines once a Release makes room.
func TestPutWaitBlocksUntilRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 2, MaxBytes: 1000})
		key := Key{Datasource: "ds"}
		fill(t, b, key, 2)
		held := b.Take(nil)

		done := putWait(t.Context(), b, key, `{"late":1}`)
		synctest.Wait()
		if err, ok := returned(done); ok {
			t.Fatalf("PutWait on a full buffer returned %v; want it to wait", err)
		}
		b.Release(key, 1, held[0].Data)
		synctest.Wait()
		if err, ok := returned(done); !ok || err != nil {
			t.Fatalf("after Release: got %v, returned %v; want nil, returned", err, ok)
		}
		if got := b.Take(nil); len(got) != 1 || string(got[0].Data) != "{\"late\":1}\n" {
			t.Fatalf("got entries %+v; want the waiting request's line", got)
		}
	})
}

// TestPutWaitContextEnds: a PutWait whose context ends returns its error
// and stores nothing, whether cancelled or past its deadline.
func TestPutWaitContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 2, MaxBytes: 1000})
		key := Key{Datasource: "ds"}
		fill(t, b, key, 2)
		before := b.Stats()

		ctx, cancel := context.WithCancel(t.Context())
		done := putWait(ctx, b, key, `{"late":1}`)
		synctest.Wait()
		if err, ok := returned(done); ok {
			t.Fatalf("PutWait on a full buffer returned %v; want it to wait", err)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v; want context.Canceled", err)
		}

		ctx, cancel = context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := b.PutWait(ctx, key, lines(`{"late":2}`), nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v; want context.DeadlineExceeded", err)
		}

		if after := b.Stats(); after != before {
			t.Fatalf("accounting changed from %+v to %+v; want nothing stored", before, after)
		}
		if got := b.Take(nil); len(got) != 2 {
			t.Fatalf("got %d entries; want only the 2 that filled the buffer", len(got))
		}
	})
}

// TestPutWaitRefusesAtOnce: what waiting cannot fix is returned without
// waiting, full buffer or not. Inside the bubble a PutWait that waited
// forever would fail the test as a deadlock.
func TestPutWaitRefusesAtOnce(t *testing.T) {
	f := func(name string, setup func(b *Buffer), in [][]byte, want error) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := New(Options{MaxEvents: 2, MaxBytes: 1000})
				fill(t, b, Key{Datasource: "ds"}, 2)
				setup(b)
				before := b.Stats()
				if err := b.PutWait(t.Context(), Key{Token: "tok", Datasource: "ds"}, in, nil); !errors.Is(err, want) {
					t.Fatalf("got %v; want %v", err, want)
				}
				if after := b.Stats(); after != before {
					t.Fatalf("accounting changed from %+v to %+v; want nothing stored", before, after)
				}
			})
		})
	}
	nothing := func(*Buffer) {}
	f("too large", nothing, lines(`{}`, `{}`, `{}`), ErrTooLarge)
	f("closed", (*Buffer).Close, lines(`{}`), ErrClosed)
	f("denied", func(b *Buffer) { b.Deny(Key{Token: "tok", Datasource: "ds"}, time.Now().Add(time.Hour)) }, lines(`{}`), ErrDenied)
	f("no lines", nothing, nil, nil)
}

// TestPutWaitWokenByClose: Close wakes a waiting PutWait, which then
// returns ErrClosed.
func TestPutWaitWokenByClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 1, MaxBytes: 1000})
		key := Key{Datasource: "ds"}
		fill(t, b, key, 1)
		done := putWait(t.Context(), b, key, `{"late":1}`)
		synctest.Wait()
		b.Close()
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v; want ErrClosed", err)
		}
	})
}

// TestPutWaitWokenByVerify: a PutWait refused for too many unverified
// tokens gets in once upstream accepts one of the tokens held.
func TestPutWaitWokenByVerify(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 100, MaxBytes: 1000, MaxUnverifiedTokens: 1})
		fill(t, b, Key{Token: "a", Datasource: "ds"}, 1)
		done := putWait(t.Context(), b, Key{Token: "b", Datasource: "ds"}, `{"b":1}`)
		synctest.Wait()
		if err, ok := returned(done); ok {
			t.Fatalf("PutWait past MaxUnverifiedTokens returned %v; want it to wait", err)
		}
		b.Verify("a")
		if err := <-done; err != nil {
			t.Fatalf("after Verify: got %v; want nil", err)
		}
	})
}

// TestPutWaitManyWaiters: each Release lets in as many waiters as it made
// room for, and the rest keep waiting; none is lost.
func TestPutWaitManyWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 4
		b := New(Options{MaxEvents: n, MaxBytes: 1000})
		key := Key{Datasource: "ds"}
		fill(t, b, key, n)
		held := b.Take(nil)
		var waiting []<-chan error
		for i := range n {
			waiting = append(waiting, putWait(t.Context(), b, key, fmt.Sprintf(`{"w":%d}`, i)))
		}
		synctest.Wait()
		in := func() (got int) {
			for _, done := range waiting {
				if err, ok := returned(done); ok {
					if err != nil {
						t.Fatalf("a waiter got %v; want nil", err)
					}
					got++
				}
			}
			return got
		}
		total := 0
		for i, release := range []int{1, 0, 2, 1} {
			for range release {
				b.Release(key, 1, held[0].Data)
				held = held[1:]
			}
			synctest.Wait()
			got := in()
			if total += got; got != release {
				t.Fatalf("release %d freed %d rows and let %d waiters in; want %d", i, release, got, release)
			}
		}
		if total != n || b.Len() != n || len(b.Take(nil)) != n {
			t.Fatalf("%d waiters got in, %d events held; want %d and %d", total, b.Len(), n, n)
		}
	})
}

// TestPutWaitConcurrent runs many producers that wait for room against one
// consumer, on real goroutines: every request is stored and consumed
// exactly once, and the limits hold throughout.
func TestPutWaitConcurrent(t *testing.T) {
	const producers, perProducer, maxEvents = 8, 500, 16
	b := New(Options{MaxEvents: maxEvents, MaxBytes: 1 << 20})
	key := Key{Datasource: "ds"}
	// Generous: it bounds a lost wake-up, which would otherwise hang.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range perProducer {
				if err := b.PutWait(ctx, key, lines(fmt.Sprintf(`{"p":%d,"i":%d}`, p, i)), nil); err != nil {
					t.Errorf("PutWait: %v", err)
					return
				}
			}
		})
	}
	seen := map[string]int{}
	var consumer sync.WaitGroup
	consumer.Go(func() {
		var got []Entry
		for len(seen) < producers*perProducer {
			select {
			case <-b.Ready():
			case <-ctx.Done():
				return
			}
			if n := b.Len(); n > maxEvents {
				t.Errorf("held %d events; limit %d", n, maxEvents)
			}
			got = b.Take(got)
			for _, e := range got {
				seen[string(e.Data)]++
				b.Release(e.Key, e.Rows, e.Data)
			}
		}
	})
	wg.Wait()
	consumer.Wait()
	if len(seen) != producers*perProducer {
		t.Fatalf("consumer saw %d distinct requests; want %d", len(seen), producers*perProducer)
	}
	for line, n := range seen {
		if n != 1 {
			t.Fatalf("request %q consumed %d times; want once", line, n)
		}
	}
}

// TestWaitRoom: WaitRoom returns at once below the fill asked for, waits
// above it until enough is released, and gives up when ctx ends.
func TestWaitRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 4, MaxBytes: 1000})
		key := Key{Datasource: "ds"}
		if err := b.WaitRoom(t.Context(), 0.5); err != nil {
			t.Fatalf("empty buffer: got %v; want nil", err)
		}
		fill(t, b, key, 4)
		held := b.Take(nil)

		ctx, cancel := context.WithCancel(t.Context())
		gaveUp := make(chan error, 1)
		go func() { gaveUp <- b.WaitRoom(ctx, 0.5) }()
		done := make(chan error, 1)
		go func() { done <- b.WaitRoom(t.Context(), 0.5) }()
		synctest.Wait()
		cancel()
		if err := <-gaveUp; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled: got %v; want context.Canceled", err)
		}
		for i, want := range []bool{false, false, true} { // fill 0.75, 0.5, 0.25
			b.Release(key, 1, held[i].Data)
			synctest.Wait()
			if err, ok := returned(done); ok != want || err != nil {
				t.Fatalf("at fill %g: got %v, returned %v; want returned %v", b.Fill(), err, ok, want)
			}
		}
	})
}
