package idempotency

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRetryStorm has 64 clients send the same 100 keys at once, each in its
// own order: every key is stored exactly once, and every other request for
// it is answered with that request's final answer, by Replay or by waiting
// for it in flight.
func TestRetryStorm(t *testing.T) {
	const clients, keys = 64, 100
	o := Options{Dir: t.TempDir()}
	s := open(t, o)
	final := func(k int) Answer { return Answer{Status: 200, Successful: k, Quarantined: k % 3} }
	var proceeds [keys]atomic.Int32
	var replays, waits atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for c := range clients {
		wg.Go(func() {
			<-start
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			for _, k := range rng.Perm(keys) {
				key := []byte(fmt.Sprint("key-", k))
				body := sum(fmt.Sprint("body-", k))
				o, p, a := s.Begin("client", "events", key, body)
				switch o {
				case Proceed:
					proceeds[k].Add(1)
					if err := p.Stored(Answer{Status: 202, Successful: k}); err != nil {
						t.Error(err)
					}
					runtime.Gosched() // let others find it in flight
					p.Done(final(k))
				case Replay:
					replays.Add(1)
				case InFlight:
					waits.Add(1)
					var ok bool
					a, ok, _ = p.Wait(time.Minute)
					if !ok {
						t.Errorf("key %d: Wait failed though the request ends with Done", k)
					}
				default:
					t.Errorf("key %d: Begin: got %v", k, o)
				}
				if o != Proceed && a != final(k) {
					t.Errorf("key %d: %v answered %+v; want %+v", k, o, a, final(k))
				}
			}
		})
	}
	close(start)
	wg.Wait()
	for k := range proceeds {
		if n := proceeds[k].Load(); n != 1 {
			t.Errorf("key %d: got %d Proceeds; want 1", k, n)
		}
	}
	if got, want := int(replays.Load()+waits.Load()), (clients-1)*keys; got != want {
		t.Errorf("replays+waits: got %d; want %d", got, want)
	}
	t.Logf("%d replays, %d waited in flight", replays.Load(), waits.Load())
	s = reopen(t, s, o)
	for k := range keys {
		_, a := mustBegin(t, s, "client", "events", fmt.Sprint("key-", k), fmt.Sprint("body-", k), Replay)
		if a != final(k) {
			t.Errorf("key %d after restart: got %+v; want %+v", k, a, final(k))
		}
	}
}

// TestCompactionUnderLoad compacts the log again and again while keys are
// stored, finished and forgotten concurrently: nothing appended during a
// compaction is lost from the rewritten file.
func TestCompactionUnderLoad(t *testing.T) {
	const workers, perWorker = 8, 300
	o := Options{Dir: t.TempDir()}
	s := open(t, o)
	compacted := hookCompactions(s)
	s.lg.mu.Lock()
	s.lg.compactMin = 16
	s.lg.mu.Unlock()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				key := []byte(fmt.Sprintf("w%d-%d", w, i))
				o, p, _ := s.Begin("", "ds", key, sum("body"))
				if o != Proceed {
					t.Errorf("%s: got %v; want proceed", key, o)
					return
				}
				if err := p.Stored(answer(202, i)); err != nil {
					t.Error(err)
				}
				if i%2 == 0 {
					p.Forget()
				} else {
					p.Done(answer(200, i))
				}
			}
		})
	}
	wg.Wait()
	waitCompaction(t, compacted)
	t.Logf("%d compactions", 1+len(compacted))
	s = reopen(t, s, o)
	for w := range workers {
		for i := range perWorker {
			key := fmt.Sprintf("w%d-%d", w, i)
			if i%2 == 0 {
				proceed(t, s, "", "ds", key, "body").Forget()
				continue
			}
			if _, a := mustBegin(t, s, "", "ds", key, "body", Replay); a != answer(200, i) {
				t.Fatalf("%s: got %+v; want %+v", key, a, answer(200, i))
			}
		}
	}
}
