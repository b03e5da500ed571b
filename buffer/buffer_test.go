package buffer

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
)

func lines(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

func TestPutTakeRelease(t *testing.T) {
	b := New(Options{MaxEvents: 10, MaxBytes: 1000})
	k := Key{Token: "t", Datasource: "ds"}
	in := lines(`{"a":1}`, `{"b":2}`)
	if err := b.Put(k, in); err != nil {
		t.Fatalf("Put: %v", err)
	}
	// Put copies: scribbling on the caller's lines must not change the entry.
	in[0][2] = 'X'

	got := b.Take(nil)
	if len(got) != 1 {
		t.Fatalf("got %d entries; want 1", len(got))
	}
	e := got[0]
	if e.Key != k || e.Rows != 2 || string(e.Data) != "{\"a\":1}\n{\"b\":2}\n" {
		t.Fatalf("got %+v (data %q); want key %v, 2 rows, both lines", e, e.Data, k)
	}
	if e.Accepted == 0 {
		t.Errorf("Accepted not set")
	}
	// Taken entries still count until released: their lines, and their
	// key's datasource name and token once.
	if s := b.Stats(); s.Events != 2 || s.Bytes != 16+len("t")+len("ds") {
		t.Fatalf("after Take: got %d events %d bytes; want 2 and 19", s.Events, s.Bytes)
	}
	data := e.Data
	if again := b.Take(got); len(again) != 0 {
		t.Fatalf("second Take: got %d entries; want 0", len(again))
	}
	b.Release(k, 2, data)
	if s := b.Stats(); s.Events != 0 || s.Bytes != 0 {
		t.Fatalf("after Release: got %+v; want empty", s)
	}
}

func TestPutAllOrNothing(t *testing.T) {
	f := func(name string, opts Options, pre int, in [][]byte, want error) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			b := New(opts)
			for i := range pre {
				if err := b.Put(Key{Datasource: "ds"}, lines(fmt.Sprintf(`{"i":%d}`, i))); err != nil {
					t.Fatalf("pre-fill Put %d: %v", i, err)
				}
			}
			before := b.Stats()
			err := b.Put(Key{Datasource: "ds"}, in)
			if !errors.Is(err, want) {
				t.Fatalf("got %v; want %v", err, want)
			}
			after := b.Stats()
			if want != nil && (after.Events != before.Events || after.Bytes != before.Bytes) {
				t.Fatalf("refused Put changed accounting: before %+v after %+v", before, after)
			}
			if want != nil && len(b.Take(nil)) != pre {
				t.Fatalf("refused Put left entries behind")
			}
		})
	}
	f("fits exactly", Options{MaxEvents: 3, MaxBytes: 100}, 1, lines(`{}`, `{}`), nil)
	f("events full", Options{MaxEvents: 3, MaxBytes: 100}, 2, lines(`{}`, `{}`), ErrFull)
	f("bytes full", Options{MaxEvents: 100, MaxBytes: 20}, 2, lines(`{"x":1}`), ErrFull)
	f("more events than capacity", Options{MaxEvents: 2, MaxBytes: 100}, 0, lines(`{}`, `{}`, `{}`), ErrTooLarge)
	f("more bytes than capacity", Options{MaxEvents: 10, MaxBytes: 5}, 0, lines(`{"a":1}`), ErrTooLarge)
}

func TestPutEmptyStoresNothing(t *testing.T) {
	b := New(Options{MaxEvents: 1, MaxBytes: 10})
	if err := b.Put(Key{}, nil); err != nil {
		t.Fatalf("got %v; want nil", err)
	}
	if b.Len() != 0 || len(b.Take(nil)) != 0 {
		t.Fatalf("empty Put stored something")
	}
}

func TestClose(t *testing.T) {
	b := New(Options{MaxEvents: 10, MaxBytes: 100})
	if err := b.Put(Key{}, lines(`{}`)); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b.Close() // idempotent
	if err := b.Put(Key{}, lines(`{}`)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close: got %v; want ErrClosed", err)
	}
	if got := b.Take(nil); len(got) != 1 {
		t.Fatalf("entries stored before Close: got %d; want 1", len(got))
	}
}

func TestReleaseClamps(t *testing.T) {
	b := New(Options{MaxEvents: 10, MaxBytes: 100})
	b.Release(Key{Datasource: "ds"}, 5, make([]byte, 50))
	if s := b.Stats(); s.Events != 0 || s.Bytes != 0 {
		t.Fatalf("got %+v; want counters clamped at zero", s)
	}
	if err := b.Put(Key{}, lines(`{}`)); err != nil {
		t.Fatalf("Put after over-release: %v", err)
	}
}

func TestReadyCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 100, MaxBytes: 1000})
		for range 5 {
			if err := b.Put(Key{}, lines(`{}`)); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case <-b.Ready():
		default:
			t.Fatalf("no kick after Put")
		}
		select {
		case <-b.Ready():
			t.Fatalf("five Puts gave more than one kick")
		default:
		}
		woke := make(chan struct{})
		go func() { <-b.Ready(); close(woke) }()
		synctest.Wait()
		b.Close()
		synctest.Wait()
		select {
		case <-woke:
		default:
			t.Fatalf("Close did not wake a waiting consumer")
		}
	})
}

// TestConcurrentNeverExceeds runs many producers against one consumer and
// checks the limits hold and every accepted event is seen exactly once.
func TestConcurrentNeverExceeds(t *testing.T) {
	const producers, perProducer, maxEvents = 8, 2000, 500
	b := New(Options{MaxEvents: maxEvents, MaxBytes: 1 << 20})
	var accepted [producers]int
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range perProducer {
				l := lines(fmt.Sprintf(`{"p":%d,"i":%d}`, p, i), `{}`)
				if err := b.Put(Key{Datasource: "ds"}, l); err == nil {
					accepted[p] += 2
				} else if !errors.Is(err, ErrFull) {
					t.Errorf("Put: %v", err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	seen := 0
	var consumer sync.WaitGroup
	consumer.Go(func() {
		var got []Entry
		for {
			select {
			case <-b.Ready():
			case <-done:
				got = b.Take(got)
				for _, e := range got {
					seen += e.Rows
				}
				return
			}
			if n := b.Len(); n > maxEvents {
				t.Errorf("held %d events; limit %d", n, maxEvents)
			}
			got = b.Take(got)
			for _, e := range got {
				seen += e.Rows
				b.Release(e.Key, e.Rows, e.Data)
			}
		}
	})
	wg.Wait()
	close(done)
	consumer.Wait()
	total := 0
	for _, n := range accepted {
		total += n
	}
	if seen != total {
		t.Fatalf("consumer saw %d events; producers were told %d were accepted", seen, total)
	}
}
