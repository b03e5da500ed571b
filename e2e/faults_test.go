package e2e

// Fault-injection suite. Each TestFault* runs the built proxy (see TestMain)
// against its own fakebird with one fault injected, drives it with a bounded
// set of concurrent clients, records every event the proxy answered 202 for,
// ends with SIGTERM and compares what was acknowledged with what reached
// upstream (and, where DEAD_LETTER_DIR is set, the dead-letter files).
//
// The promise under test: an event the proxy acknowledged reaches its
// datasource, or an operator can see exactly why not. Every scenario logs
//
//	FAULT <name>: sent=N acked=N refused=N delivered=N missing=N duplicates=N unknown=N dead_lettered=N took=D
//
// where sent counts events the clients posted, refused those answered 429,
// 503 or connection refused, unknown those whose request failed without an
// answer (they may or may not be upstream), delivered the acknowledged
// events found upstream, dead_lettered those found in a dead-letter file,
// and missing the acknowledged events found in neither. Missing must be 0;
// duplicates (at-least-once) are allowed and counted.

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
)

// faultEnv is the proxy-token configuration every scenario starts from:
// short intervals so faults and recoveries happen within seconds.
func faultEnv(upstream string, extra map[string]string) map[string]string {
	env := map[string]string{
		"TINYBIRD_BASE_URL":   upstream,
		"TINYBIRD_TOKEN":      upstreamToken,
		"AUTHORIZATION_TOKEN": clientToken,
		"FLUSH_INTERVAL":      "100",
		"RETRY_MIN_BACKOFF":   "20ms",
		"RETRY_MAX_BACKOFF":   "500ms",
		"SHUTDOWN_TIMEOUT":    "30s",
	}
	maps.Copy(env, extra)
	return env
}

// TestFault500sAndRateLimit: upstream fails 30% of requests with 500 and
// rate-limits each datasource to 5 requests/s with 429 + Retry-After.
func TestFault500sAndRateLimit(t *testing.T) {
	t.Parallel()
	const name = "500s_and_rate_limit"
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.SetFault(fakebird.Chain(fakebird.RateLimit(5), fakebird.FailRatio(0.3, 500, 1)))
	p := startProxy(t, faultEnv(fb.URL(), nil))
	l := newLedger(t, name)

	l.drive(p.base, faultLoad{clients: 8, requests: 400, lines: 8, token: clientToken,
		datasources: []string{"fault_rl_a", "fault_rl_b", "fault_rl_c"},
		duration:    3 * time.Second, gap: 5 * time.Millisecond})()
	// Queued batches are sent one per request at most 5/s per datasource,
	// and a 500 carrying X-RateLimit-Reset waits 1s: the backlog of 3s of
	// 100ms batches takes ~10s to clear.
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	if err := settle(ctx, fb, p, l, func() map[event]int { return upstreamRows(fb) }, 5*time.Second); err != nil {
		t.Errorf("%s: before SIGTERM: %v", name, err)
	}
	finish(t, l, p, 40*time.Second)

	l.tally(fb.Rows(), upstreamToken, nil)
	sc := fb.StatusCounts()
	t.Logf("%s: upstream answers %v", name, sc)
	if sc[500] == 0 {
		t.Errorf("%s: upstream answered %v; want some 500, or the fault was not exercised", name, sc)
	}
	// No 429 is fine: the proxy may pace itself by X-RateLimit-Remaining.
}

// TestFaultUpstreamDown: upstream refuses connections for 5s under load; the
// small buffer fills and clients get 429 with Retry-After; after Up every
// acknowledged event arrives.
func TestFaultUpstreamDown(t *testing.T) {
	t.Parallel()
	const name = "upstream_down"
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	p := startProxy(t, faultEnv(fb.URL(), map[string]string{"BUFFER_SIZE": "2000"}))
	l := newLedger(t, name)

	stop := make(chan struct{})
	wait := l.drive(p.base, faultLoad{clients: 8, requests: 3000, lines: 10, token: clientToken,
		datasources: []string{"fault_down_a", "fault_down_b"},
		duration:    2 * time.Minute, gap: 5 * time.Millisecond, stop: stop})
	time.Sleep(time.Second) // load with a healthy upstream first
	l.setPhase("down")
	fb.Down()
	// Down until the buffer is full and clients are told so, however slowly
	// a loaded machine lets them send: a condition, not a window.
	for deadline := time.Now().Add(time.Minute); l.requests("down", "429") == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if err := fb.Up(); err != nil {
		t.Error(err)
	}
	l.setPhase("up")
	time.Sleep(1500 * time.Millisecond) // load against a recovering upstream
	close(stop)
	wait()

	if l.requests("down", "429") == 0 {
		t.Errorf("%s: got no 429 while upstream was down with BUFFER_SIZE=2000; want the buffer to fill", name)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := settle(ctx, fb, p, l, func() map[event]int { return upstreamRows(fb) }, 5*time.Second); err != nil {
		t.Errorf("%s: after Up, before SIGTERM: %v", name, err)
	}
	finish(t, l, p, 40*time.Second)
	l.tally(fb.Rows(), upstreamToken, nil)
	t.Logf("%s: upstream answers %v", name, fb.StatusCounts())
}

// TestFaultSlowUpstream: every upstream request takes 3s; with a small
// buffer clients get 429 backpressure while the proxy's buffer and memory
// stay bounded. SIGTERM comes right after the load, so the drain runs
// against the slow upstream too.
func TestFaultSlowUpstream(t *testing.T) {
	t.Parallel()
	const name, bufferSize = "slow_upstream", 500
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.SetFault(fakebird.Always(fakebird.Response{Delay: 3 * time.Second}))
	p := startProxy(t, faultEnv(fb.URL(), map[string]string{
		"BUFFER_SIZE": strconv.Itoa(bufferSize),
		// Each key sends its batches one at a time, 3s each, and the drain
		// does not merge them: a 1s interval caps the batches queued per
		// key at one per second of load, so the drain takes well under
		// SHUTDOWN_TIMEOUT however slowly the clients fill the buffer.
		"FLUSH_INTERVAL":   "1000",
		"SHUTDOWN_TIMEOUT": "45s",
	}))
	l := newLedger(t, name)

	watch := watchChild(t, name, p, 200*time.Millisecond, bufferSize)
	l.drive(p.base, faultLoad{clients: 8, requests: 2000, lines: 10, pad: 200, token: clientToken,
		datasources: []string{"fault_slow_a", "fault_slow_b", "fault_slow_c"},
		duration:    5 * time.Second, gap: 2 * time.Millisecond, pause429: 50 * time.Millisecond})()
	watch()
	if l.requests("load", "429") == 0 {
		t.Errorf("%s: got no 429 with BUFFER_SIZE=%d and a 3s upstream; want backpressure", name, bufferSize)
	}
	finish(t, l, p, 60*time.Second)
	l.tally(fb.Rows(), upstreamToken, nil)
	t.Logf("%s: upstream answers %v", name, fb.StatusCounts())
}

// TestFaultSIGTERMUnderLoad: SIGTERM while clients are still sending (to an
// upstream that is a little slow and fails now and then). Every event
// acknowledged, before or after the signal, is delivered before exit 0;
// later requests get 503 JSON or connection refused.
func TestFaultSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	const name = "sigterm_under_load"
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.SetFault(fakebird.Chain(fakebird.Always(fakebird.Response{Delay: 200 * time.Millisecond}),
		fakebird.FailRatio(0.2, 500, 4)))
	p := startProxy(t, faultEnv(fb.URL(), nil))
	l := newLedger(t, name)

	wait := l.drive(p.base, faultLoad{clients: 8, requests: 5000, lines: 5, token: clientToken,
		datasources: []string{"fault_term_a", "fault_term_b"},
		duration:    15 * time.Second, gap: 2 * time.Millisecond})
	time.Sleep(1500 * time.Millisecond)
	start := time.Now()
	l.sigterm(p)
	got := p.exitStatus(40 * time.Second)
	t.Logf("%s: exit status %d, %v after SIGTERM", name, got, time.Since(start).Round(10*time.Millisecond))
	wait() // every client ends at its first connection refused
	if got != 0 {
		t.Errorf("%s: got exit status %d; want 0", name, got)
	}
	assertNoSecrets(t, p.stderr.String(), upstreamToken, clientToken)

	if l.requests("load", "202") == 0 {
		t.Errorf("%s: no request was accepted before SIGTERM", name)
	}
	if l.requests("after_sigterm", "conn_refused") == 0 {
		t.Errorf("%s: no client saw connection refused after the proxy exited", name)
	}
	l.tally(fb.Rows(), upstreamToken, nil)
	t.Logf("%s: upstream answers %v", name, fb.StatusCounts())
}

// TestFault413Splitting: upstream takes at most 64 KiB per request while
// batches may grow to 1 MiB. On 413 the proxy must split the batch in
// halves and send each, so every row arrives; a single row still too large
// goes to the dead letter (reason row_too_large, status 413).
func TestFault413Splitting(t *testing.T) {
	t.Parallel()
	const name, maxBody = "413_splitting", 64 << 10
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}, MaxBodyBytes: maxBody})
	dead := t.TempDir()
	p := startProxy(t, faultEnv(fb.URL(), map[string]string{
		"BATCH_MAX_BYTES": "1MiB",
		"FLUSH_INTERVAL":  "500", // long enough for batches well above 64 KiB
		"DEAD_LETTER_DIR": dead,
	}))
	l := newLedger(t, name)

	// One row larger than anything upstream takes, alone in its datasource.
	huge := post{ds: "fault_split_huge", token: clientToken,
		lines: []string{fmt.Sprintf(`{"client":-1,"seq":0,"pad":%q}`, strings.Repeat("h", maxBody+1000))}}
	if l.send(newClient(false), p.base, huge, faultLoad{}); len(l.ackedEvents()) != 1 {
		t.Fatalf("%s: the %d-byte row was not accepted", name, len(huge.lines[0]))
	}
	l.drive(p.base, faultLoad{clients: 8, requests: 40, lines: 8, pad: 1000, token: clientToken,
		datasources: []string{"fault_split_rows"}, duration: 10 * time.Second})()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	found := func() map[event]int { return upstreamAndDead(t, fb, dead) }
	if err := settle(ctx, fb, p, l, found, 2*time.Second); err != nil {
		t.Errorf("%s: before SIGTERM: %v", name, err)
	}
	finish(t, l, p, 40*time.Second)

	dl := readDeadLetters(t, dead, true)
	f := l.tally(fb.Rows(), upstreamToken, dl)
	too := 0
	for _, r := range fb.Requests() {
		if r.Datasource == "fault_split_rows" && r.Status == http.StatusRequestEntityTooLarge {
			too++
		}
	}
	t.Logf("%s: upstream answers %v; %d requests for fault_split_rows got 413", name, fb.StatusCounts(), too)
	if too == 0 {
		t.Errorf("%s: no batch exceeded %d bytes, so nothing was split: the fault was not exercised", name, maxBody)
	}
	if want := (event{huge.ds, huge.lines[0]}); dl[want] != 1 {
		t.Errorf("%s: the row larger than upstream's limit is in the dead letter %d times; want 1", name, dl[want])
	} else if n := checkDeadLetterLog(t, dead, huge.ds, "row_too_large", http.StatusRequestEntityTooLarge); n != 1 {
		t.Errorf("%s: %s.errors.jsonl has %d records; want 1 for the one oversized row", name, huge.ds, n)
	}
	for e := range dl {
		if e.ds != huge.ds {
			t.Errorf("%s: rows of %s were dead-lettered (%d acknowledged, %d dead-lettered in all); want them split and delivered",
				name, e.ds, f.acked, f.deadLettered)
			break
		}
	}
}

// TestFault403OneDatasource: in pass-through mode upstream refuses one
// datasource with 403. The others keep flowing; the refused one's rows go
// to DEAD_LETTER_DIR, byte-identical, with one record per dropped batch.
func TestFault403OneDatasource(t *testing.T) {
	t.Parallel()
	const name, denied = "403_one_datasource", "denied"
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{clientToken}})
	fb.SetFault(fakebird.ForDatasource(denied, fakebird.Always(fakebird.Response{Status: http.StatusForbidden,
		Body: `{"error":"Forbidden: the token lacks APPEND on denied"}`})))
	dead := t.TempDir()
	// Pass-through mode: no TINYBIRD_TOKEN, each client's token goes upstream.
	env := faultEnv(fb.URL(), map[string]string{"DEAD_LETTER_DIR": dead})
	delete(env, "TINYBIRD_TOKEN")
	delete(env, "AUTHORIZATION_TOKEN")
	p := startProxy(t, env)
	l := newLedger(t, name)

	watch := watchChild(t, name, p, 200*time.Millisecond, 1_000_000)
	l.drive(p.base, faultLoad{clients: 8, requests: 150, lines: 8, pad: 100, token: clientToken,
		datasources: []string{"fault_ok_a", denied, "fault_ok_b"},
		duration:    10 * time.Second, gap: 2 * time.Millisecond,
		// The proxy may refuse the denied datasource once upstream did;
		// never the token's other datasources.
		refusable: func(ds string, status int) bool { return ds == denied && status == http.StatusForbidden }})()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	found := func() map[event]int { return upstreamAndDead(t, fb, dead) }
	if err := settle(ctx, fb, p, l, found, 2*time.Second); err != nil {
		t.Errorf("%s: before SIGTERM: %v", name, err)
	}
	watch()
	finish(t, l, p, 40*time.Second)

	dl := readDeadLetters(t, dead, true)
	f := l.tally(fb.Rows(), clientToken, dl)
	var ackedDenied, dlDenied int
	for _, e := range l.ackedEvents() {
		if e.ds == denied {
			ackedDenied++
		}
	}
	for e, n := range dl {
		if e.ds != denied {
			t.Errorf("%s: a row of %s was dead-lettered; want only %s's", name, e.ds, denied)
			break
		}
		dlDenied += n
	}
	batches := checkDeadLetterLog(t, dead, denied, "upstream_rejected", http.StatusForbidden)
	t.Logf("%s: %d acknowledged for %s, %d rows in %s.ndjson from %d dropped batches; upstream answers %v",
		name, ackedDenied, denied, dlDenied, denied, batches, fb.StatusCounts())
	if ackedDenied == 0 || f.acked == ackedDenied {
		t.Errorf("%s: %d of %d acknowledged events were for %s; want some for it and some for the others", name, ackedDenied, f.acked, denied)
	}
	if up := fb.RowsFor(denied); len(up) > 0 {
		t.Errorf("%s: got %d rows of %s upstream; want 0, upstream refuses it", name, len(up), denied)
	}
	files, _ := os.ReadDir(dead)
	for _, fi := range files {
		if b, err := os.ReadFile(filepath.Join(dead, fi.Name())); err == nil {
			assertNoSecrets(t, string(b), clientToken)
		}
	}
}
