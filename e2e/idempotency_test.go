package e2e

// End-to-end tests of Idempotency-Key: a retry storm on one process, the
// window surviving a restart (SIGTERM and kill -9) with SPOOL_DIR, two
// replicas sharing the window through the JetStream queue, and the error
// bodies of a reused key and an invalid one.

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/natstest"
)

// idemHeaderReplayed is the header a repeated key's answer carries.
const idemHeaderReplayed = "Idempotent-Replayed"

// idemBody is the wire body of lines: with or without the final newline,
// gzip'd or not.
func idemBody(lines []string, gz, noFinalLine bool) []byte {
	body := []byte(strings.Join(lines, "\n"))
	if !noFinalLine {
		body = append(body, '\n')
	}
	if gz {
		var b bytes.Buffer
		idemGzip.Lock()
		defer idemGzip.Unlock()
		if idemGzip.w == nil {
			idemGzip.w = gzip.NewWriter(&b)
		} else {
			idemGzip.w.Reset(&b) // a new writer costs milliseconds under the race detector
		}
		idemGzip.w.Write(body)
		idemGzip.w.Close()
		body = b.Bytes()
	}
	return body
}

var idemGzip struct {
	sync.Mutex
	w *gzip.Writer
}

// idemSend sends p with Idempotency-Key key (none when key is "").
func idemSend(client *http.Client, base string, p post, key string) (reply, error) {
	return idemSendBody(client, base, p, key, idemBody(p.lines, p.gzip, p.noFinalLine))
}

// idemSendBody sends p's request with body as its wire body (encoded as
// p.gzip says) and Idempotency-Key key (none when key is "").
func idemSendBody(client *http.Client, base string, p post, key string, body []byte) (reply, error) {
	p.key = key
	return p.sendBody(client, base, body)
}

// idemSendResolved sends p with key, retrying a 409 (the first request
// with the key still in flight) until it gets another answer; it returns
// that answer and how many 409s it got on the way.
func idemSendResolved(client *http.Client, base string, p post, key string, body []byte) (reply, int, error) {
	conflicts := 0
	for {
		r, err := idemSendBody(client, base, p, key, body)
		if err != nil || r.status != http.StatusConflict || conflicts >= 100 {
			return r, conflicts, err
		}
		conflicts++
		time.Sleep(20 * time.Millisecond) // Retry-After says 1s; the test does not need to be that polite
	}
}

// idemRows returns the successful_rows of a 2xx answer's body, or -1.
func idemRows(body []byte) int {
	var v struct {
		Successful  *int `json:"successful_rows"`
		Quarantined *int `json:"quarantined_rows"`
	}
	if json.Unmarshal(body, &v) != nil || v.Successful == nil || v.Quarantined == nil || *v.Quarantined != 0 {
		return -1
	}
	return *v.Successful
}

// idemReplayed reports whether r carries Idempotent-Replayed: true.
func idemReplayed(r reply) bool { return r.header.Get(idemHeaderReplayed) == "true" }

// idemKeyBody is one key's request: its rows, each with a unique id, and
// its wire bodies (wire[gzip][noFinalLine]), encoded once: gzip under the
// race detector costs milliseconds a body.
type idemKeyBody struct {
	key   string
	lines []string
	wire  [2][2][]byte
}

// idemBodies returns n keys named prefix-NNN, each with 1 to 5 rows.
func idemBodies(prefix string, n int, seed uint64) []idemKeyBody {
	rng := rand.New(rand.NewPCG(seed, 0x1de))
	out := make([]idemKeyBody, n)
	for k := range out {
		out[k].key = fmt.Sprintf("%s-%03d", prefix, k)
		for r := range 1 + rng.IntN(5) {
			out[k].lines = append(out[k].lines, fmt.Sprintf(`{"id":"%s-%03d-r%d","key":%d,"row":%d,"s":"Zürich"}`, prefix, k, r, k, r))
		}
		for gz := range 2 {
			for nf := range 2 {
				out[k].wire[gz][nf] = idemBody(out[k].lines, gz == 1, nf == 1)
			}
		}
	}
	return out
}

// idemEvents lists the rows of bodies as events of ds.
func idemEvents(ds string, bodies []idemKeyBody) []event {
	var out []event
	for _, b := range bodies {
		for _, l := range b.lines {
			out = append(out, event{ds, l})
		}
	}
	return out
}

// idemOutcome is one keyed request's final answer, for the storm tests.
type idemOutcome struct {
	key       int
	status    int
	replayed  bool
	rows      int // successful_rows, -1 when the body did not say
	conflicts int
	err       error
}

// idemStorm makes conns clients (client c sends to bases[c%len(bases)])
// each send every key of bodies, in its own random order, some gzip'd,
// some without a final newline, resolving 409s by retrying.
func idemStorm(bases []string, conns int, ds string, bodies []idemKeyBody) []idemOutcome {
	var (
		mu  sync.Mutex
		out []idemOutcome
		wg  sync.WaitGroup
	)
	for c := range conns {
		wg.Go(func() {
			client := newClient(true)
			client.Timeout = 30 * time.Second
			rng := rand.New(rand.NewPCG(uint64(c), 0x5707))
			base := bases[c%len(bases)]
			mine := make([]idemOutcome, 0, len(bodies))
			for _, k := range rng.Perm(len(bodies)) {
				gz, nf := rng.IntN(3) == 0, rng.IntN(4) == 0
				p := post{ds: ds, token: clientToken, lines: bodies[k].lines, gzip: gz}
				r, conflicts, err := idemSendResolved(client, base, p, bodies[k].key, bodies[k].wire[idemB2i(gz)][idemB2i(nf)])
				mine = append(mine, idemOutcome{key: k, status: r.status, replayed: idemReplayed(r),
					rows: idemRows(r.body), conflicts: conflicts, err: err})
			}
			mu.Lock()
			out = append(out, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func idemB2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// idemCheckStorm checks every outcome is a 202 with the key's row count,
// and each key has exactly one answer that is not a replay. It returns the
// number of 202s and of 409s seen on the way.
func idemCheckStorm(t *testing.T, outs []idemOutcome, bodies []idemKeyBody) (accepted, conflicts int) {
	t.Helper()
	firsts := make([]int, len(bodies))
	var bad []string
	for _, o := range outs {
		conflicts += o.conflicts
		switch {
		case o.err != nil:
			bad = append(bad, fmt.Sprintf("key %s: %v", bodies[o.key].key, o.err))
			continue
		case o.status != http.StatusAccepted || o.rows != len(bodies[o.key].lines):
			bad = append(bad, fmt.Sprintf("key %s (%d rows): got %d, successful_rows %d, replayed %v; want 202 with successful_rows %d",
				bodies[o.key].key, len(bodies[o.key].lines), o.status, o.rows, o.replayed, len(bodies[o.key].lines)))
			continue
		}
		accepted++
		if !o.replayed {
			firsts[o.key]++
		}
	}
	for k, n := range firsts {
		if n != 1 {
			bad = append(bad, fmt.Sprintf("key %s: %d answers without %s: true; want exactly 1", bodies[k].key, n, idemHeaderReplayed))
		}
	}
	if len(bad) > 0 {
		t.Errorf("%d of %d answers wrong, first ones:\n%s", len(bad), len(outs), strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
	return accepted, conflicts
}

// TestE2EIdempotencyRetryStorm: 64 connections each send all 200 keyed
// requests, in random orders, plain or gzip'd, with or without a final
// newline. Each key is stored once: exactly one 202 per key is not a
// replay, every other answer is the same 202 with Idempotent-Replayed, and
// upstream gets every row once.
func TestE2EIdempotencyRetryStorm(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
		"FLUSH_INTERVAL": "100", "SHUTDOWN_TIMEOUT": "20s",
	})
	const conns, keys, ds = 64, 200, "idem_storm"
	bodies := idemBodies("storm", keys, 1)
	start := time.Now()
	outs := idemStorm([]string{p.base}, conns, ds, bodies)
	took := time.Since(start)
	accepted, conflicts := idemCheckStorm(t, outs, bodies)

	replays := metricSum(t, p, "tbproxy_idempotent_replays_total")
	t.Logf("IDEMPOTENCY retry_storm: %d requests in %s, %d answered 202, %d 409s retried, replays_total=%v",
		len(outs), took.Round(time.Millisecond), accepted, conflicts, replays)
	if want := float64(accepted - keys); replays != want {
		t.Errorf("tbproxy_idempotent_replays_total = %v; want %v (202 answers %d minus %d keys)", replays, want, accepted, keys)
	}
	if len(outs) != conns*keys {
		t.Errorf("got %d outcomes; want %d", len(outs), conns*keys)
	}

	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("exit status %d after SIGTERM; want 0", code)
	}
	assertDelivered(t, fb.Rows(), idemEvents(ds, bodies), nil, upstreamToken)
}

// TestE2EIdempotencyAcrossRestart: with SPOOL_DIR, keys answered before a
// clean SIGTERM, and keys answered before a kill -9, are replayed by the
// next process on the same directory (whatever the encoding of the
// retry), a different body under a remembered key gets 422, and upstream
// gets every row once.
func TestE2EIdempotencyAcrossRestart(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	dir := t.TempDir()
	env := func() map[string]string {
		return map[string]string{
			"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
			"SPOOL_DIR": dir, "FLUSH_INTERVAL": "100", "SHUTDOWN_TIMEOUT": "20s",
			"RETRY_MIN_BACKOFF": "20ms", "RETRY_MAX_BACKOFF": "200ms",
		}
	}
	const ds = "idem_restart"
	bodies := idemBodies("restart", 40, 2)
	clean, killed := bodies[:20], bodies[20:] // k000-k019 before SIGTERM, k020-k039 before kill -9
	client := newClient(true)

	// send sends every body once, plain or gzip'd, with or without the
	// final newline, and checks each answer.
	send := func(p *child, phase string, bs []idemKeyBody, wantReplayed bool) {
		t.Helper()
		for i, b := range bs {
			rq := post{ds: ds, token: clientToken, lines: b.lines, gzip: i%2 == 1, noFinalLine: i%3 == 2}
			r, err := idemSend(client, p.base, rq, b.key)
			if err != nil {
				t.Fatalf("%s: key %s: %v", phase, b.key, err)
			}
			if r.status != http.StatusAccepted || idemRows(r.body) != len(b.lines) || idemReplayed(r) != wantReplayed {
				t.Errorf("%s: key %s: got %d %s (%s: %q); want 202 with successful_rows %d and replayed=%v",
					phase, b.key, r.status, r.body, idemHeaderReplayed, r.header.Get(idemHeaderReplayed), len(b.lines), wantReplayed)
			}
		}
	}
	mismatch := func(p *child, phase string, b idemKeyBody) {
		t.Helper()
		other := post{ds: ds, token: clientToken, lines: []string{`{"id":"never-stored","key":"` + b.key + `"}`}}
		r, err := idemSend(client, p.base, other, b.key)
		if err != nil {
			t.Fatal(err)
		}
		if r.status != http.StatusUnprocessableEntity {
			t.Errorf("%s: key %s with another body: got %d %s; want 422", phase, b.key, r.status, r.body)
		} else {
			assertJSONError(t, r)
		}
	}

	// Run 1: the keys, then a clean SIGTERM that delivers them.
	p := startProxy(t, env())
	send(p, "run 1", clean, false)
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("run 1: exit status %d after SIGTERM; want 0", code)
	}
	if n, want := fb.RowCountFor(ds), len(idemEvents(ds, clean)); n != want {
		t.Errorf("after run 1's drain: %d rows upstream; want %d", n, want)
	}

	// Run 2: the keys are remembered. Upstream goes down, so what is sent
	// now stays in the spool, then the process is killed.
	p = startProxy(t, env())
	send(p, "run 2 after SIGTERM", clean, true)
	mismatch(p, "run 2 after SIGTERM", clean[0])
	fb.Down()
	send(p, "run 2 upstream down", killed, false)
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done

	// Run 3: every key is remembered, those answered just before the kill
	// too; the spool delivers the killed run's rows once upstream is back.
	p = startProxy(t, env())
	send(p, "run 3 after kill -9", bodies, true)
	mismatch(p, "run 3 after kill -9", killed[0])
	mismatch(p, "run 3 after kill -9", clean[1])
	if replays := metricSum(t, p, "tbproxy_idempotent_replays_total"); replays != float64(len(bodies)) {
		t.Errorf("run 3: tbproxy_idempotent_replays_total = %v; want %d", replays, len(bodies))
	}
	if err := fb.Up(); err != nil {
		t.Fatal(err)
	}
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("run 3: exit status %d after SIGTERM; want 0", code)
	}
	assertDelivered(t, fb.Rows(), idemEvents(ds, bodies), nil, upstreamToken)
}

// TestE2EIdempotencyTwoReplicas: two replicas on one nats-server share the
// window through the stream's Nats-Msg-Id: a key sent to A and then to B is
// stored once and B answers it as a replay; a storm of the same keys
// across both stores each once, with exactly one first answer per key.
func TestE2EIdempotencyTwoReplicas(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	a := startProxy(t, queueEnv(fb, ns.URL()))
	b := startProxy(t, queueEnv(fb, ns.URL()))
	const ds = "idem_replicas"
	client := newClient(true)

	one := idemBodies("pair", 1, 3)[0]
	rq := post{ds: ds, token: clientToken, lines: one.lines}
	for i, p := range []*child{a, b, a, b} {
		r, err := idemSend(client, p.base, rq, one.key)
		if err != nil {
			t.Fatal(err)
		}
		wantReplayed := i > 0
		if r.status != http.StatusAccepted || idemRows(r.body) != len(one.lines) || idemReplayed(r) != wantReplayed {
			t.Errorf("send %d (to %s): got %d %s (%s: %q); want 202 with successful_rows %d and replayed=%v",
				i+1, []string{"A", "B"}[i%2], r.status, r.body, idemHeaderReplayed, r.header.Get(idemHeaderReplayed), len(one.lines), wantReplayed)
		}
	}
	other := post{ds: ds, token: clientToken, lines: []string{`{"id":"never-stored"}`}}
	if r, err := idemSend(client, a.base, other, one.key); err != nil || r.status != http.StatusUnprocessableEntity {
		t.Errorf("the key with another body on A (which answered it first): got %d %s (%v); want 422", r.status, r.body, err)
	}

	bodies := idemBodies("replicas", 40, 4)
	start := time.Now()
	outs := idemStorm([]string{a.base, b.base}, 16, ds, bodies)
	took := time.Since(start)
	accepted, conflicts := idemCheckStorm(t, outs, bodies)
	t.Logf("IDEMPOTENCY two_replicas: %d requests across 2 replicas in %s, %d answered 202, %d 409s retried",
		len(outs), took.Round(time.Millisecond), accepted, conflicts)

	want := append(idemEvents(ds, []idemKeyBody{one}), idemEvents(ds, bodies)...)
	missing, dups, rows := awaitAll(t, fb, want, 20*time.Second)
	if missing > 0 {
		t.Errorf("%d of %d rows never reached upstream (%d rows there)", missing, len(want), rows)
	}
	for _, p := range []*child{a, b} {
		p.sigterm()
		if code := p.exitStatus(30 * time.Second); code != 0 {
			t.Errorf("replica exited %d after SIGTERM; want 0", code)
		}
	}
	t.Logf("upstream: %d rows, %d duplicates", rows, dups)
	assertDelivered(t, fb.Rows(), want, nil, upstreamToken)
}

// TestE2EIdempotencyErrorBodies: a key reused with another body (422) and
// an invalid key (400: too long, not printable ASCII) are refused with
// Tinybird's JSON error shape, and store nothing.
func TestE2EIdempotencyErrorBodies(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
		"FLUSH_INTERVAL": "50",
	})
	const ds = "idem_errors"
	client := newClient(false)
	first := post{ds: ds, token: clientToken, lines: []string{`{"id":"first"}`}}
	if r, err := idemSend(client, p.base, first, "order-42"); err != nil || r.status != http.StatusAccepted || idemReplayed(r) {
		t.Fatalf("first request: got %d %s (%v); want 202, not replayed", r.status, r.body, err)
	}

	cases := []struct {
		name, key string
		lines     []string
		want      int
	}{
		{"same key, another body", "order-42", []string{`{"id":"second"}`}, http.StatusUnprocessableEntity},
		{"same key, one more row", "order-42", []string{`{"id":"first"}`, `{"id":"extra"}`}, http.StatusUnprocessableEntity},
		{"key of 257 bytes", strings.Repeat("k", 257), []string{`{"id":"long-key"}`}, http.StatusBadRequest},
		{"key not ASCII", "clé-1", []string{`{"id":"utf8-key"}`}, http.StatusBadRequest},
	}
	for _, c := range cases {
		r, err := idemSend(client, p.base, post{ds: ds, token: clientToken, lines: c.lines}, c.key)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.status != c.want {
			t.Errorf("%s: got %d %s; want %d", c.name, r.status, r.body, c.want)
			continue
		}
		assertJSONError(t, r)
		if idemReplayed(r) {
			t.Errorf("%s: a refusal carries %s: true", c.name, idemHeaderReplayed)
		}
	}
	// The longest valid key is taken.
	longest := post{ds: ds, token: clientToken, lines: []string{`{"id":"longest-key"}`}}
	if r, err := idemSend(client, p.base, longest, strings.Repeat("k", 256)); err != nil || r.status != http.StatusAccepted {
		t.Errorf("a key of 256 bytes: got %d %s (%v); want 202", r.status, r.body, err)
	}
	if n := metricSum(t, p, "tbproxy_requests_refused_total", `reason="idempotency_conflict"`); n != 2 {
		t.Errorf("tbproxy_requests_refused_total{reason=\"idempotency_conflict\"} = %v; want 2", n)
	}
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("exit status %d after SIGTERM; want 0", code)
	}
	assertDelivered(t, fb.Rows(), []event{{ds, `{"id":"first"}`}, {ds, `{"id":"longest-key"}`}}, nil, upstreamToken)
}

// TestE2EIdempotencyInFlight: a repeat that arrives while the first
// request with its key is still in flight (here a wait=true request held
// until the slow upstream acknowledges its rows) waits for it and gets its
// answer, replayed; the rows are stored once.
func TestE2EIdempotencyInFlight(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	arrived := make(chan struct{}, 1)
	fb.SetFault(func(*fakebird.Request) *fakebird.Response {
		select {
		case arrived <- struct{}{}:
		default:
		}
		return &fakebird.Response{Delay: time.Second} // then answered as usual
	})
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
		"FLUSH_INTERVAL": "50", "WAIT_TIMEOUT": "8s",
	})
	const ds = "idem_inflight"
	lines := []string{`{"id":"inflight-1"}`, `{"id":"inflight-2"}`}
	type answer struct {
		r   reply
		err error
	}
	first := make(chan answer, 1)
	go func() {
		r, err := idemSend(newClient(false), p.base, post{ds: ds, token: clientToken, wait: true, lines: lines}, "inflight-key")
		first <- answer{r, err}
	}()
	select {
	case <-arrived: // the first request's rows are upstream, unanswered for a second
	case a := <-first:
		t.Fatalf("first request answered before its rows reached upstream: %d %s (%v)", a.r.status, a.r.body, a.err)
	case <-time.After(15 * time.Second):
		t.Fatal("the first request's rows never reached upstream")
	}
	repeat, err := idemSend(newClient(false), p.base, post{ds: ds, token: clientToken, lines: lines}, "inflight-key")
	a := <-first
	if a.err != nil || err != nil {
		t.Fatalf("first: %v; repeat: %v", a.err, err)
	}
	if a.r.status != http.StatusOK || idemRows(a.r.body) != 2 || idemReplayed(a.r) {
		t.Errorf("first (wait=true): got %d %s replayed=%v; want 200 with successful_rows 2, not replayed", a.r.status, a.r.body, idemReplayed(a.r))
	}
	if repeat.status != a.r.status || idemRows(repeat.body) != 2 || !idemReplayed(repeat) {
		t.Errorf("repeat sent while the first was in flight: got %d %s (%s: %q); want the first's answer (%d, successful_rows 2), replayed",
			repeat.status, repeat.body, idemHeaderReplayed, repeat.header.Get(idemHeaderReplayed), a.r.status)
	}
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("exit status %d after SIGTERM; want 0", code)
	}
	assertDelivered(t, fb.Rows(), []event{{ds, lines[0]}, {ds, lines[1]}}, nil, upstreamToken)
}
