package limits

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tbproxy/tbproxy/internal/natstest"
)

// natsReplica is one replica of TestSharedOverNATS: a Limiter, its own
// connection, and what the test measures of it.
type natsReplica struct {
	id string
	l  *Limiter
	nc *nats.Conn

	mu          sync.Mutex    // protects the fields below
	admitted    []time.Time   // when each admitted Take started
	maxTake     time.Duration // the longest admitted Take
	starts      []time.Time   // when each AppendReport started, after the start of the publisher
	maxTransit  time.Duration // its reports: from the start of AppendReport to the end of a Merge elsewhere
	mergeErrors []error
}

// window returns the most events (n each) r admitted within any span of
// length w.
func (r *natsReplica) window(w time.Duration, n int64) int64 {
	ts := slices.Clone(r.admitted)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	best, lo := 0, 0
	for hi := range ts {
		for ts[hi].Sub(ts[lo]) > w {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return int64(best) * n
}

func (r *natsReplica) maxGap() time.Duration {
	var gap time.Duration
	for i := 1; i < len(r.starts); i++ {
		gap = max(gap, r.starts[i].Sub(r.starts[i-1]))
	}
	return gap
}

// TestSharedOverNATS runs two replicas' Limiters over a real nats-server:
// each publishes its report every 50 ms on a core NATS subject and merges
// the other's, while goroutines take 10 events at a time from both for one
// identity (PerMinute 20,000) until both refuse. The total admitted is at
// least the limit less one request, and at most the limit plus the
// documented tolerance: what the replica that stopped first admitted
// during one report interval plus the transit time, measured here.
//
// The Limiters' clock is frozen inside one minute so the window cannot
// move under the test; the network, the intervals and the goroutines are
// real.
func TestSharedOverNATS(t *testing.T) {
	srv := natstest.Start(t)
	const (
		limit    = 20_000
		n        = 10
		interval = 50 * time.Millisecond
		subject  = "tbproxy.test.limits"
		key      = "client"
	)
	lim := Limit{PerMinute: limit}
	clk := newClock(base.Add(20 * time.Second))
	replicas := []*natsReplica{{id: "replica-a"}, {id: "replica-b"}}
	byID := map[string]*natsReplica{}
	for _, r := range replicas {
		r.l = New(Options{Now: clk.Now})
		byID[r.id] = r
		nc, err := nats.Connect(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		r.nc = nc
	}
	for _, r := range replicas {
		if _, err := r.nc.Subscribe(subject, func(m *nats.Msg) {
			from := byID[m.Header.Get("Replica")]
			err := r.l.Merge(m.Data, r.id)
			if from == nil || from == r {
				return
			}
			started, _ := strconv.ParseInt(m.Header.Get("Started"), 10, 64)
			transit := time.Since(time.Unix(0, started))
			from.mu.Lock()
			from.maxTransit = max(from.maxTransit, transit)
			from.mu.Unlock()
			if err != nil {
				r.mu.Lock()
				r.mergeErrors = append(r.mergeErrors, err)
				r.mu.Unlock()
			}
		}); err != nil {
			t.Fatal(err)
		}
		if err := r.nc.Flush(); err != nil { // the server has the subscription
			t.Fatal(err)
		}
	}

	ctx, stop := context.WithCancel(t.Context())
	var publishers sync.WaitGroup
	for _, r := range replicas {
		r.starts = append(r.starts, time.Now()) // nothing admitted before: a report of nothing
		publishers.Go(func() {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			var buf []byte
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				start := time.Now()
				buf = r.l.AppendReport(buf[:0], r.id)
				r.mu.Lock()
				r.starts = append(r.starts, start)
				r.mu.Unlock()
				if len(buf) == 0 {
					continue
				}
				m := nats.NewMsg(subject)
				m.Header.Set("Replica", r.id)
				m.Header.Set("Started", strconv.FormatInt(start.UnixNano(), 10))
				m.Data = buf
				if err := r.nc.PublishMsg(m); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}

	// Four goroutines per replica, each a Take every 2 ms: about 20,000
	// events/s per replica, so the limit takes about ten intervals.
	var hammers sync.WaitGroup
	for _, r := range replicas {
		for range 4 {
			hammers.Go(func() {
				tick := time.NewTicker(2 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
					start := time.Now()
					d := r.l.Take(key, lim, n)
					took := time.Since(start)
					if !d.Allowed {
						if d.Never || d.Untracked || d.Layer != Minute {
							t.Errorf("%s: refused with %+v; want the minute limit", r.id, d)
						}
						return
					}
					r.mu.Lock()
					r.admitted = append(r.admitted, start)
					r.maxTake = max(r.maxTake, took)
					r.mu.Unlock()
				}
			})
		}
	}
	done := make(chan struct{})
	go func() { hammers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Error("both replicas did not refuse within 30s")
	}
	stop()
	publishers.Wait()
	<-done
	if t.Failed() {
		return
	}

	var total, tolerance int64
	for _, r := range replicas {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, err := range r.mergeErrors {
			t.Errorf("%s: Merge: %v", r.id, err)
		}
		admitted := int64(len(r.admitted)) * n
		total += admitted
		// A report not yet merged elsewhere was started less than one
		// interval (the longest gap between reports) plus the transit
		// ago; the start of a Take precedes its admission by at most the
		// longest Take.
		span := r.maxGap() + r.maxTransit + r.maxTake
		w := r.window(span, n)
		tolerance = max(tolerance, w)
		t.Logf("%s admitted %d; longest report gap %s, transit %s, Take %s; at most %d in any %s",
			r.id, admitted, r.maxGap(), r.maxTransit, r.maxTake, w, span)
	}
	t.Logf("total admitted %d of %d: overshoot %d, tolerance %d", total, limit, total-limit, tolerance)
	if total < limit-n || total > limit+tolerance {
		t.Errorf("admitted %d in total; want between %d and %d (the limit plus the tolerance)", total, limit-n, limit+tolerance)
	}
}
