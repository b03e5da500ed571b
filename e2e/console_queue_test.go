package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/console"
	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/natstest"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// TestE2EConsolePauseWithQueue: a pause is per replica. Two replicas share
// one JetStream queue, each with its console.
//
//  1. q_paused is paused on both; its requests, spread over both, are each
//     held by the one replica that fetched it (none lost, none twice), past
//     QUEUE_ACK_WAIT without being redelivered to the other, while q_other
//     keeps flowing.
//  2. Resumed on A only: A's share arrives, B's stays held by B.
//  3. Resumed on B: the rest arrives; every row upstream exactly once.
func TestE2EConsolePauseWithQueue(t *testing.T) {
	t.Parallel()
	const (
		paused, other = "q_paused", "q_other"
		n             = 200 // one-event requests for q_paused
		ackWait       = 2 * time.Second
	)
	ns := natstest.Start(t) // skips without nats-server, fails instead under CI
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	env := func() map[string]string {
		return queueEnv(fb, ns.URL(), "ADMIN_TOKEN", adminToken, "FLUSH_INTERVAL", "200",
			"QUEUE_ACK_WAIT", ackWait.String())
	}
	a, b := startProxy(t, env()), startProxy(t, env())
	replicas := []*child{a, b}
	name := map[*child]string{a: "A", b: "B"}

	act := func(p *child, what string) {
		t.Helper()
		if code, body := adminDo(t, http.MethodPost, p.base+"/-/api/"+what+"?name="+paused, adminToken); code != http.StatusOK {
			t.Fatalf("%s: POST /-/api/%s: %d %s", name[p], what, code, body)
		}
	}
	// stream is q_paused as p's console shows it; a replica that never
	// fetched any of its messages does not list it, which reads as zeros.
	stream := func(p *child) console.Stream {
		t.Helper()
		s, _ := consoleStream(consoleStatus(t, p.base), paused)
		return s
	}
	redelivered := func(p *child) float64 {
		t.Helper()
		v, err := metric(p, "tbproxy_queue_redelivered_messages_total")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Phase 1: paused everywhere.
	for _, p := range replicas {
		act(p, "pause")
	}
	client := newClient(true)
	var acked []event
	others := 0
	for i := range n {
		rq := post{ds: paused, token: clientToken, lines: []string{fmt.Sprintf(`{"i":%d}`, i)}}
		rq.mustAccept(t, client, replicas[i%2].base)
		acked = append(acked, event{rq.ds, rq.lines[0]})
		if i%5 == 0 { // the other datasource interleaved, through both replicas too
			rq := post{ds: other, token: clientToken, lines: []string{fmt.Sprintf(`{"other":%d}`, i)}}
			rq.mustAccept(t, client, replicas[(i/5)%2].base)
			acked = append(acked, event{rq.ds, rq.lines[0]})
			others++
		}
	}
	// q_other flows whatever replica fetched it: the pause is per datasource.
	poll.Until(t, "every q_other row upstream", func() bool { return fb.RowCountFor(other) == others })
	// Every acknowledged q_paused request was fetched by one replica or the
	// other: between them they hold all n, so nothing is still on its way
	// that could arrive upstream later.
	poll.Until(t, "the q_paused rows held across A and B to sum to n", func() bool {
		if got := fb.RowCountFor(paused); got != 0 {
			t.Fatalf("%d q_paused rows upstream while paused on both replicas; want 0", got)
		}
		return stream(a).HeldEvents+stream(b).HeldEvents == n
	})

	// Held past QUEUE_ACK_WAIT, a message is redelivered to the other
	// replica unless its holder keeps reporting progress. Time has to pass
	// to show it does; meanwhile the two replicas must keep holding exactly
	// n between them, have fetched exactly n (a redelivered message would
	// be fetched, and held, twice), and send nothing of q_paused.
	window := time.Now().Add(2 * ackWait)
	var sa, sb console.Stream
	poll.Until(t, "two ack waits to pass with q_paused held", func() bool {
		sa, sb = stream(a), stream(b)
		if held, fetched, up := sa.HeldEvents+sb.HeldEvents, sa.Accepted+sb.Accepted, fb.RowCountFor(paused); held != n || fetched != n || up != 0 {
			t.Fatalf("while paused on both: held %d+%d, fetched %d+%d, %d upstream; want held and fetched to sum to %d, none upstream",
				sa.HeldEvents, sb.HeldEvents, sa.Accepted, sb.Accepted, up, n)
		}
		return time.Now().After(window)
	})
	for _, p := range replicas {
		if r := redelivered(p); r != 0 {
			t.Errorf("%s: %v messages redelivered while held; want 0", name[p], r)
		}
	}
	heldA, heldB := sa.HeldEvents, sb.HeldEvents
	t.Logf("split of %d q_paused rows: A holds %d, B holds %d", n, heldA, heldB)
	for _, s := range []console.Stream{sa, sb} {
		if s.HeldEvents > 0 && !s.Paused {
			t.Errorf("console shows %s not paused while holding %d", paused, s.HeldEvents)
		}
	}

	// Phase 2: resumed on A only. A delivers its share; B's stays with B,
	// not redelivered to A, which is fetching again. (If A fetched none, or
	// all, this holds trivially.)
	act(a, "resume")
	poll.Until(t, "A's share of q_paused upstream", func() bool {
		sa = stream(a)
		return fb.RowCountFor(paused) == int(heldA) && sa.Delivered == heldA && sa.HeldEvents == 0
	})
	sb = stream(b)
	if sa.Paused || sa.Accepted != heldA {
		t.Errorf("A after its resume: %+v; want not paused, %d fetched", sa, heldA)
	}
	if sb.HeldEvents != heldB || sb.Delivered != 0 || (heldB > 0 && !sb.Paused) {
		t.Errorf("B while still paused: held %d, delivered %d, paused %v; want %d held, none delivered, paused",
			sb.HeldEvents, sb.Delivered, sb.Paused, heldB)
	}
	if got := fb.RowCountFor(paused); got != int(heldA) {
		t.Errorf("%d q_paused rows upstream with B still paused; want A's %d", got, heldA)
	}

	// Phase 3: resumed on B. Everything acknowledged arrives exactly once.
	act(b, "resume")
	poll.Until(t, "every q_paused row upstream", func() bool { return fb.RowCountFor(paused) >= n })
	assertDelivered(t, fb.Rows(), acked, nil, upstreamToken)
	poll.Until(t, "the consoles' delivered counts to sum to n", func() bool {
		sa, sb = stream(a), stream(b)
		return sa.Delivered+sb.Delivered == n && sa.HeldEvents+sb.HeldEvents == 0
	})
	if sa.Delivered != heldA || sb.Delivered != heldB {
		t.Errorf("delivered A %d, B %d; want each its share, %d and %d", sa.Delivered, sb.Delivered, heldA, heldB)
	}
	for _, p := range replicas {
		if r := redelivered(p); r != 0 {
			t.Errorf("%s: %v messages redelivered; want 0", name[p], r)
		}
	}

	for _, p := range replicas {
		p.sigterm()
	}
	for _, p := range replicas {
		if code := p.exitStatus(30 * time.Second); code != 0 {
			t.Errorf("%s exited %d after SIGTERM; want 0", name[p], code)
		}
		assertNoSecrets(t, p.stderr.String(), clientToken, upstreamToken, adminToken)
	}
}
