package buffer

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// releaseAll takes every queued entry and releases those of key (every
// entry when key is nil), returning how many rows it released.
func releaseAll(b *Buffer, key *Key) (rows int) {
	for _, e := range b.Take(nil) {
		if key == nil || e.Key == *key {
			b.Release(e.Key, e.Rows, e.Data)
			rows += e.Rows
		}
	}
	return rows
}

// wantHeld fails the test unless key's stream holds events and bytes.
func wantHeld(t *testing.T, b *Buffer, key Key, events, bytes int) {
	t.Helper()
	if e, by := b.StreamHeld(key); e != events || by != bytes {
		t.Fatalf("StreamHeld(%+v): got %d events %d bytes; want %d and %d", key, e, by, events, bytes)
	}
}

// TestStreamShareTwoStreams: while B is accepting, A fills its share and is
// refused with ErrStreamShare (an ErrFull: 429, spilled by the spool), B
// keeps being accepted up to what is left, and A is accepted again once
// the flusher releases some of its events.
func TestStreamShareTwoStreams(t *testing.T) {
	b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: 0.7})
	a, bk := Key{Datasource: "a"}, Key{Datasource: "b"}
	fill(t, b, bk, 1)
	fill(t, b, a, 7) // 0.7 × 10
	err := b.Put(a, lines(`{}`))
	if !errors.Is(err, ErrStreamShare) || !errors.Is(err, ErrFull) {
		t.Fatalf("A past its share: got %v; want ErrStreamShare, an ErrFull", err)
	}
	wantHeld(t, b, a, 7, 7*len("{\"fill\":0}\n"))
	fill(t, b, bk, 2) // the rest of the buffer
	if err := b.Put(bk, lines(`{}`)); !errors.Is(err, ErrFull) || errors.Is(err, ErrStreamShare) {
		t.Fatalf("B with the buffer full: got %v; want ErrFull, not ErrStreamShare", err)
	}
	if s := b.Stats(); s.Events != 10 {
		t.Fatalf("got %d events held; want 10", s.Events)
	}

	got := b.Take(nil)
	for _, e := range got {
		if e.Key == a {
			b.Release(e.Key, e.Rows, e.Data)
			break
		}
	}
	if err := b.Put(a, lines(`{}`)); err != nil {
		t.Fatalf("A after one of its events was released: %v", err)
	}
	if err := b.Put(a, lines(`{}`)); !errors.Is(err, ErrFull) {
		t.Fatalf("A at its share again: got %v; want ErrFull", err)
	}
}

// TestStreamShareAloneTakesAll: a stream alone may fill the whole buffer.
// Once another stream tries to put, even refused because the buffer is
// full, the first is held to its share until the other has been quiet for
// ActiveFor.
func TestStreamShareAloneTakesAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: 0.5})
		a, bk := Key{Datasource: "a"}, Key{Datasource: "b"}
		fill(t, b, a, 10)
		if err := b.Put(bk, lines(`{}`)); !errors.Is(err, ErrFull) || errors.Is(err, ErrStreamShare) {
			t.Fatalf("B into a buffer A filled: got %v; want ErrFull", err)
		}
		held := b.Take(nil)
		for _, e := range held[:4] {
			b.Release(e.Key, e.Rows, e.Data)
		}
		// A holds 6 of 10, over its share of 5, and B tried lately.
		time.Sleep(ActiveFor / 2)
		if err := b.Put(a, lines(`{}`)); !errors.Is(err, ErrStreamShare) {
			t.Fatalf("A over its share %v after B tried: got %v; want ErrStreamShare", ActiveFor/2, err)
		}
		time.Sleep(ActiveFor / 2)
		if err := b.Put(a, lines(`{}`)); err != nil {
			t.Fatalf("A once B was quiet for ActiveFor: %v", err)
		}
		wantHeld(t, b, a, 7, 7*len("{\"fill\":0}\n")-len("{\"fill\":0}\n")+len("{}\n"))
	})
}

// TestStreamShareBigRequest: a request bigger than the share is taken from
// a stream alone, and refused while another holds events or tried within
// ActiveFor.
func TestStreamShareBigRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: 0.3})
		a, bk := Key{Datasource: "a"}, Key{Datasource: "b"}
		five := lines(`{}`, `{}`, `{}`, `{}`, `{}`)
		if err := b.Put(a, five); err != nil {
			t.Fatalf("5 events, share 3, alone: %v", err)
		}
		releaseAll(b, nil)
		time.Sleep(ActiveFor)
		fill(t, b, bk, 1)
		if err := b.Put(a, five); !errors.Is(err, ErrStreamShare) {
			t.Fatalf("5 events, share 3, B holding: got %v; want ErrStreamShare", err)
		}
		releaseAll(b, nil)
		if err := b.Put(a, five); !errors.Is(err, ErrStreamShare) {
			t.Fatalf("B released but tried just now: got %v; want ErrStreamShare", err)
		}
		time.Sleep(ActiveFor)
		if err := b.Put(a, five); err != nil {
			t.Fatalf("B quiet for ActiveFor: %v", err)
		}
	})
}

// TestStreamShareBigRequestsDoNotLock: two streams that both send requests
// bigger than the share, refused for it, do not keep each other out for
// ever: a refusal for the share does not make a stream accepting.
func TestStreamShareBigRequestsDoNotLock(t *testing.T) {
	b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: 0.3})
	a, bk := Key{Datasource: "a"}, Key{Datasource: "b"}
	five := lines(`{}`, `{}`, `{}`, `{}`, `{}`)
	if err := b.Put(a, five); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(bk, five); !errors.Is(err, ErrStreamShare) {
		t.Fatalf("B while A holds: got %v; want ErrStreamShare", err)
	}
	releaseAll(b, nil)
	// A is still accepting for ActiveFor, from its own Put; B is not.
	if err := b.Put(a, five); err != nil {
		t.Fatalf("A after B was refused for its share: %v", err)
	}
}

// TestStreamShareCountsBytes: the share bounds a stream's NDJSON bytes as
// well as its events.
func TestStreamShareCountsBytes(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 1000, StreamShare: 0.5})
	a, bk := Key{Datasource: "a"}, Key{Datasource: "b"}
	fill(t, b, bk, 1)
	line := strings.Repeat("x", 99) // 100 bytes with its newline
	for i := range 5 {
		if err := b.Put(a, lines(line)); err != nil {
			t.Fatalf("100-byte event %d of a 500-byte share: %v", i, err)
		}
	}
	if err := b.Put(a, lines(line)); !errors.Is(err, ErrStreamShare) {
		t.Fatalf("a sixth: got %v; want ErrStreamShare with 5 of 50 events held", err)
	}
	wantHeld(t, b, a, 5, 500)
	if err := b.Put(bk, lines(line)); err != nil {
		t.Fatalf("B beside A's 500 bytes: %v", err)
	}
}

// TestStreamShareClientIsPartOfTheStream: keys that differ only by Client
// are two streams, each with its own share, and entries keep their Client.
func TestStreamShareClientIsPartOfTheStream(t *testing.T) {
	b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: 0.5})
	ca := Key{Token: "tok", Datasource: "ds", Client: "alpha"}
	cb := Key{Token: "tok", Datasource: "ds", Client: "beta"}
	fill(t, b, cb, 1)
	fill(t, b, ca, 5)
	if err := b.Put(ca, lines(`{}`)); !errors.Is(err, ErrStreamShare) {
		t.Fatalf("alpha past its share: got %v; want ErrStreamShare", err)
	}
	fill(t, b, cb, 4)
	wantHeld(t, b, ca, 5, 5*len("{\"fill\":0}\n"))
	wantHeld(t, b, cb, 5, 5*len("{\"fill\":0}\n"))
	wantHeld(t, b, Key{Token: "tok", Datasource: "ds"}, 0, 0)
	clients := map[string]int{}
	for _, e := range b.Take(nil) {
		clients[e.Key.Client] += e.Rows
	}
	if clients["alpha"] != 5 || clients["beta"] != 5 {
		t.Fatalf("entries by client: got %v; want alpha 5 and beta 5", clients)
	}
}

// TestDenyIgnoresClient: a token upstream refused for a datasource is
// refused whichever client sends it.
func TestDenyIgnoresClient(t *testing.T) {
	b := New(Options{MaxEvents: 10, MaxBytes: 1000})
	b.Deny(Key{Token: "tok", Datasource: "ds", Client: "alpha"}, time.Now().Add(time.Hour))
	for _, c := range []string{"alpha", "beta", ""} {
		if err := b.Put(Key{Token: "tok", Datasource: "ds", Client: c}, lines(`{}`)); !errors.Is(err, ErrDenied) {
			t.Errorf("client %q: got %v; want ErrDenied", c, err)
		}
	}
}

// TestStreamShareOff: with the share at 0, 1 or more, or not a number, one
// stream may fill the buffer beside another, and nothing is tracked.
func TestStreamShareOff(t *testing.T) {
	for _, share := range []float64{0, 1, 1.5, -0.5, math.NaN()} {
		t.Run(fmt.Sprint(share), func(t *testing.T) {
			b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: share})
			fill(t, b, Key{Datasource: "b"}, 1)
			fill(t, b, Key{Datasource: "a"}, 9)
			wantHeld(t, b, Key{Datasource: "a"}, 0, 0)
			if n := b.streamCount(); n != 0 {
				t.Fatalf("got %d streams tracked; want 0", n)
			}
		})
	}
}

// TestPutWaitOnShare: a PutWait past its stream's share waits, and gets in
// when the flusher releases that stream's events.
func TestPutWaitOnShare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: 0.5})
		a, bk := Key{Datasource: "a"}, Key{Datasource: "b"}
		fill(t, b, bk, 1)
		fill(t, b, a, 5)
		held := b.Take(nil)
		done := putWait(t.Context(), b, a, `{"late":1}`)
		synctest.Wait()
		if err, ok := returned(done); ok {
			t.Fatalf("PutWait past the share returned %v; want it to wait", err)
		}
		for _, e := range held {
			if e.Key == a {
				b.Release(e.Key, e.Rows, e.Data)
				break
			}
		}
		synctest.Wait()
		if err, ok := returned(done); !ok || err != nil {
			t.Fatalf("after A's Release: got %v, returned %v; want nil, returned", err, ok)
		}
		wantHeld(t, b, a, 5, 4*len("{\"fill\":0}\n")+len("{\"late\":1}\n"))
	})
}

// TestPutWaitOnShareOthersQuiet: a PutWait refused for its share only
// because another stream tried lately, holding nothing, gets in once that
// stream has been quiet for ActiveFor, with no Release to wake it.
func TestPutWaitOnShareOthersQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: 0.3})
		a, bk := Key{Datasource: "a"}, Key{Datasource: "b"}
		fill(t, b, bk, 1)
		releaseAll(b, nil)
		done := make(chan error, 1)
		go func() { done <- b.PutWait(t.Context(), a, lines(`{}`, `{}`, `{}`, `{}`), nil) }()
		time.Sleep(ActiveFor / 2)
		synctest.Wait()
		if err, ok := returned(done); ok {
			t.Fatalf("PutWait bigger than the share, B tried lately: returned %v; want it to wait", err)
		}
		time.Sleep(ActiveFor / 2)
		synctest.Wait()
		if err, ok := returned(done); !ok || err != nil {
			t.Fatalf("B quiet for ActiveFor: got %v, returned %v; want nil, returned", err, ok)
		}
	})
}

// TestStreamTableBounded: 100k distinct streams that each tried once and
// hold nothing, accepted and released or refused for room, leave at most
// maxIdleStreams remembered; long tokens are bounded by their bytes; and
// the idle ones are forgotten, a few per call, once ActiveFor has passed.
func TestStreamTableBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 1000, MaxBytes: 1 << 20, StreamShare: 0.5})
		for i := range 50_000 {
			k := Key{Token: "t" + strconv.Itoa(i), Datasource: "ds"}
			if err := b.Put(k, lines(`{}`)); err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			releaseAll(b, nil)
		}
		if n := b.streamCount(); n > maxIdleStreams {
			t.Fatalf("after 50k accepted and released: %d streams; want at most %d", n, maxIdleStreams)
		}
		// Two holders fill the buffer: each may take half of it, as the
		// other is accepting.
		for _, h := range []string{"h1", "h2"} {
			for b.Put(Key{Datasource: h}, lines(`{}`)) == nil {
			}
		}
		if s := b.Stats(); s.Events != 1000 {
			t.Fatalf("two holders hold %d events; want 1000", s.Events)
		}
		for i := range 50_000 {
			k := Key{Token: "r" + strconv.Itoa(i), Datasource: "ds"}
			if err := b.Put(k, lines(`{}`)); !errors.Is(err, ErrFull) {
				t.Fatalf("stream %d into a full buffer: got %v; want ErrFull", i, err)
			}
		}
		if n := b.streamCount(); n > maxIdleStreams+2 {
			t.Fatalf("after 50k refused: %d streams; want at most %d", n, maxIdleStreams+2)
		}
		releaseAll(b, nil)

		long := strings.Repeat("x", 60_000)
		for i := range 200 {
			k := Key{Token: long + strconv.Itoa(i), Datasource: "ds"}
			if err := b.Put(k, lines(`{}`)); err != nil {
				t.Fatalf("long token %d: %v", i, err)
			}
			releaseAll(b, nil)
		}
		if n := b.streamCount(); n > maxIdleStreams {
			t.Fatalf("after long tokens: %d streams; want at most %d", n, maxIdleStreams)
		}
		b.mu.Lock()
		kb := b.streams.idleKeyBytes
		b.mu.Unlock()
		if kb > maxIdleKeyBytes {
			t.Fatalf("idle keys hold %d bytes; want at most %d", kb, maxIdleKeyBytes)
		}

		time.Sleep(ActiveFor)
		one := Key{Datasource: "one"}
		for range maxIdleStreams {
			fill(t, b, one, 1)
			releaseAll(b, nil)
		}
		if n := b.streamCount(); n > 2 {
			t.Fatalf("ActiveFor later, after %d calls: %d streams remembered; want at most 2", maxIdleStreams, n)
		}
	})
}

// TestStreamShareConcurrent runs producers of a few streams against one
// consumer: the limits hold, and once everything is released no stream
// holds anything and the table's counts agree.
func TestStreamShareConcurrent(t *testing.T) {
	const producers, perProducer, maxEvents = 8, 2000, 200
	b := New(Options{MaxEvents: maxEvents, MaxBytes: 1 << 20, StreamShare: 0.4})
	key := func(p int) Key { return Key{Datasource: "ds", Client: strconv.Itoa(p % 3)} }
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range perProducer {
				err := b.Put(key(p), lines(fmt.Sprintf(`{"p":%d,"i":%d}`, p, i)))
				if err != nil && !errors.Is(err, ErrFull) {
					t.Errorf("Put: %v", err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	var consumer sync.WaitGroup
	consumer.Go(func() {
		var got []Entry
		for {
			select {
			case <-b.Ready():
			case <-done:
				return
			}
			got = b.Take(got)
			for _, e := range got {
				b.Release(e.Key, e.Rows, e.Data)
			}
		}
	})
	wg.Wait()
	close(done)
	consumer.Wait()
	releaseAll(b, nil)
	for p := range 3 {
		wantHeld(t, b, key(p), 0, 0)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.streams.holding != 0 || b.heldEvents != 0 {
		t.Fatalf("everything released: %d streams holding, %d events held; want 0 and 0", b.streams.holding, b.heldEvents)
	}
}

// TestIdleKeyBytesCountEveryPart: the bound on idle streams' key bytes
// counts the client, the token and the datasource of each, exactly.
func TestIdleKeyBytesCountEveryPart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Options{MaxEvents: 1000, MaxBytes: 1 << 20, StreamShare: 0.5})
		want := 0
		for i := range 3 {
			k := Key{Client: "client-" + strconv.Itoa(i), Token: strings.Repeat("t", 100+i), Datasource: strings.Repeat("d", 50+i)}
			if err := b.Put(k, lines(`{}`)); err != nil {
				t.Fatal(err)
			}
			releaseAll(b, nil)
			want += len(k.Client) + len(k.Token) + len(k.Datasource)
		}
		b.mu.Lock()
		got := b.streams.idleKeyBytes
		b.mu.Unlock()
		if got != want {
			t.Fatalf("idle keys hold %d bytes; want %d (client, token and datasource of each)", got, want)
		}
	})
}
