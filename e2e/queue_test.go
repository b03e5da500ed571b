package e2e

// End-to-end tests of the shared JetStream queue (QUEUE_URL, issue #8): the
// built binary, several replicas, real nats-server processes on loopback
// (internal/natstest), and a fakebird upstream.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/natstest"
	"github.com/tbproxy/tbproxy/internal/poll"
)

func queueEnv(fb *fakebird.Server, natsURL string, kv ...string) map[string]string {
	env := map[string]string{
		"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
		"QUEUE_URL": natsURL, "QUEUE_ACK_WAIT": "2s", "QUEUE_MAX_BYTES": "256MiB", "FLUSH_INTERVAL": "200", "SHUTDOWN_TIMEOUT": "10s",
		"RETRY_MIN_BACKOFF": "20ms", "RETRY_MAX_BACKOFF": "200ms",
	}
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return env
}

// load sends requests from clients goroutines, client c to bases[c%len],
// until stop is closed (or a bounded number of requests), and records what
// was acknowledged.
type load struct {
	mu      sync.Mutex
	acked   []event
	maybe   map[event]bool
	sent    int
	refused map[int]int // status → requests
	// since counts events acknowledged after mark; progress is kicked on
	// each acknowledgement.
	mark     time.Time
	since    int
	progress chan struct{}
}

// markNow starts counting acknowledgements from now.
func (l *load) markNow() {
	l.mu.Lock()
	l.mark, l.since = time.Now(), 0
	l.mu.Unlock()
}

// waitSince waits until n events were acknowledged since markNow, or d
// passes, and returns how many were and how long the first one took.
func (l *load) waitSince(n int, d time.Duration) int {
	deadline := time.After(d)
	for {
		l.mu.Lock()
		got := l.since
		l.mu.Unlock()
		if got >= n {
			return got
		}
		select {
		case <-l.progress:
		case <-deadline:
			return got
		}
	}
}

func (l *load) run(stop <-chan struct{}, clients int, bases func(c int) string, tag string) *sync.WaitGroup {
	if l.maybe == nil {
		l.maybe, l.refused, l.progress = map[event]bool{}, map[int]int{}, make(chan struct{}, 1)
	}
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			client := newClient(true)
			client.Timeout = 15 * time.Second
			for n := 0; n < 20_000; n++ { // bounded; stop ends it long before
				select {
				case <-stop:
					return
				default:
				}
				rq := post{ds: fmt.Sprintf("queue_%d", n%3), token: clientToken}
				for i := range 1 + n%5 {
					rq.lines = append(rq.lines, fmt.Sprintf(`{"t":%q,"client":%d,"n":%d,"i":%d}`, tag, c, n, i))
				}
				r, err := rq.send(client, bases(c))
				l.mu.Lock()
				l.sent += len(rq.lines)
				for _, line := range rq.lines {
					switch {
					case err == nil && r.status == http.StatusAccepted:
						l.acked = append(l.acked, event{rq.ds, line})
						if !l.mark.IsZero() {
							l.since++
						}
					case err != nil:
						l.maybe[event{rq.ds, line}] = true
					}
				}
				if err == nil && r.status != http.StatusAccepted {
					l.refused[r.status]++
				}
				l.mu.Unlock()
				select {
				case l.progress <- struct{}{}:
				default:
				}
				if err != nil || (r.status != http.StatusAccepted && r.status != http.StatusServiceUnavailable) {
					// A dead replica (connection refused), or an answer
					// this test does not expect: stop this client.
					if err == nil {
						return
					}
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		})
	}
	return &wg
}

// awaitAll waits until upstream holds every acknowledged event at least
// once (or d passes), then returns how many are missing and how many extra
// copies arrived.
func awaitAll(t *testing.T, fb *fakebird.Server, acked []event, d time.Duration) (missing, dups int, rows int) {
	t.Helper()
	deadline := time.After(d)
	for {
		all := fb.Rows()
		seen := make(map[event]int, len(all))
		for _, r := range all {
			seen[event{r.Datasource, string(r.Line)}]++
		}
		missing, dups = 0, 0
		for _, e := range acked {
			switch n := seen[e]; {
			case n == 0:
				missing++
			case n > 1:
				dups += n - 1
			}
		}
		if missing == 0 {
			return 0, dups, len(all)
		}
		select {
		case <-fb.Changed():
		case <-deadline:
			return missing, dups, len(all)
		}
	}
}

// TestE2EQueueTwoReplicasKill9: two replicas on one NATS server take load
// spread across both; one is killed with SIGKILL mid-load. JetStream
// redelivers what it held to the survivor after QUEUE_ACK_WAIT, so every
// acknowledged event reaches upstream; duplicates are counted and reported.
func TestE2EQueueTwoReplicasKill9(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	p1 := startProxy(t, queueEnv(fb, ns.URL()))
	p2 := startProxy(t, queueEnv(fb, ns.URL()))

	var l load
	stop := make(chan struct{})
	wg := l.run(stop, 6, func(c int) string {
		if c%2 == 0 {
			return p1.base
		}
		return p2.base
	}, "kill9")
	time.Sleep(1500 * time.Millisecond) // load runs on both; then one replica dies mid-load
	if err := p1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p1.done
	time.Sleep(700 * time.Millisecond) // the survivor keeps taking load
	close(stop)
	wg.Wait()

	missing, dups, rows := awaitAll(t, fb, l.acked, 30*time.Second)
	_, metrics := getStatus(t, p2.base+"/metrics")
	redelivered := regexp.MustCompile(`(?m)^tbproxy_queue_redelivered_messages_total (\S+)`).FindStringSubmatch(metrics)
	t.Logf("QUEUE two_replicas_kill9: sent=%d acked=%d upstream_rows=%d missing=%d duplicates=%d unknown_outcome=%d refused=%v survivor_redelivered_messages=%v",
		l.sent, len(l.acked), rows, missing, dups, len(l.maybe), l.refused, redelivered[1:])
	if missing > 0 {
		t.Errorf("%d acknowledged events never reached upstream", missing)
	}
	if len(l.acked) < 200 {
		t.Errorf("only %d events acknowledged: the load did not run", len(l.acked))
	}
	p2.sigterm()
	if code := p2.exitStatus(30 * time.Second); code != 0 {
		t.Errorf("survivor exited %d after SIGTERM; want 0", code)
	}
	assertNoSecrets(t, p2.stderr.String(), upstreamToken, clientToken)
}

// TestE2EQueueClusterNodeLoss: three NATS nodes, a stream with three
// replicas; one node is killed mid-load. Requests caught in the failover may
// get 503 (not acknowledged); nothing acknowledged is lost and ingest goes on.
func TestE2EQueueClusterNodeLoss(t *testing.T) {
	t.Parallel()
	cl := natstest.StartCluster(t, 3)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	env := func() map[string]string {
		return queueEnv(fb, cl.URLs(), "QUEUE_REPLICAS", "3", "QUEUE_STREAM", "TBCLUSTER")
	}
	p1 := startProxy(t, env())
	p2 := startProxy(t, env())
	bases := func(c int) string {
		if c%2 == 0 {
			return p1.base
		}
		return p2.base
	}

	var l load
	stop := make(chan struct{})
	wg := l.run(stop, 6, bases, "cluster")
	time.Sleep(time.Second)
	cl.Servers[0].Stop()
	stopped := time.Now()
	l.markNow()
	// Ingest must continue on two nodes, once JetStream has moved the
	// stream's leader if it was on the lost node.
	afterLoss := l.waitSince(500, 30*time.Second)
	took := time.Since(stopped)
	close(stop)
	wg.Wait()

	missing, dups, rows := awaitAll(t, fb, l.acked, 40*time.Second)
	t.Logf("QUEUE cluster_node_loss: sent=%d acked=%d acked_after_node_loss=%d (500 within %s) upstream_rows=%d missing=%d duplicates=%d refused=%v",
		l.sent, len(l.acked), afterLoss, took.Round(time.Millisecond), rows, missing, dups, l.refused)
	if missing > 0 {
		t.Errorf("%d acknowledged events never reached upstream", missing)
	}
	if afterLoss < 500 {
		t.Errorf("only %d events acknowledged in the 30s after a NATS node was lost; want ingest to continue", afterLoss)
	}
	for _, p := range []*child{p1, p2} {
		p.sigterm()
		if code := p.exitStatus(30 * time.Second); code != 0 {
			t.Errorf("proxy exited %d after SIGTERM; want 0", code)
		}
	}
}

// TestE2EQueueBackpressureAndOutage: a full stream answers 429 with
// Retry-After; NATS down answers 503 and /ready 503; NATS back up, writes
// are accepted again, and everything acknowledged is delivered.
func TestE2EQueueBackpressureAndOutage(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.Down()
	p := startProxy(t, queueEnv(fb, ns.URL(), "QUEUE_MAX_BYTES", "1MiB", "MAX_BODY_BYTES", "64KiB",
		"BUFFER_SIZE", "20", "BATCH_SIZE", "10"))
	client := newClient(true)
	var acked []event
	var full reply
	line := strings.Repeat("x", 1000)
	for i := 0; i < 200 && full.status == 0; i++ { // 1 MiB holds about 100 requests of 10 KB
		pr := post{ds: "queue_full", token: clientToken}
		for j := range 10 {
			pr.lines = append(pr.lines, fmt.Sprintf(`{"i":%d,"j":%d,"pad":%q}`, i, j, line))
		}
		r, err := pr.send(client, p.base)
		switch {
		case err != nil:
			t.Fatal(err)
		case r.status == http.StatusAccepted:
			for _, l := range pr.lines {
				acked = append(acked, event{pr.ds, l})
			}
		case r.status == http.StatusTooManyRequests:
			full = r
		default:
			t.Fatalf("POST: got %d %s; want 202 or 429", r.status, r.body)
		}
	}
	if full.status == 0 {
		t.Fatal("got no 429 with QUEUE_MAX_BYTES=1MiB and the upstream down")
	}
	if s, err := strconv.Atoi(full.header.Get("Retry-After")); err != nil || s < 1 {
		t.Errorf("got Retry-After %q; want whole seconds >= 1", full.header.Get("Retry-After"))
	}
	assertJSONError(t, full)

	ns.Stop()
	var down reply
	for i := 0; i < 50 && down.status != http.StatusServiceUnavailable; i++ { // the client notices the loss within moments
		r, err := post{ds: "queue_full", token: clientToken, lines: []string{`{"down":1}`}}.send(client, p.base)
		if err != nil {
			t.Fatal(err)
		}
		down = r
		if r.status == http.StatusServiceUnavailable {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if down.status != http.StatusServiceUnavailable {
		t.Fatalf("POST with NATS down: got %d %s; want 503", down.status, down.body)
	}
	assertJSONError(t, down)
	if code, body := getStatus(t, p.base+"/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "NATS") {
		t.Errorf("GET /ready with NATS down: got %d %s; want 503 naming NATS", code, body)
	}

	ns.Start()
	if err := fb.Up(); err != nil {
		t.Fatal(err)
	}
	accepted := false
	for i := 0; i < 100 && !accepted; i++ { // reconnects every 250ms
		pr := post{ds: "queue_back", token: clientToken, lines: []string{fmt.Sprintf(`{"back":%d}`, i)}}
		r, err := pr.send(client, p.base)
		if err != nil {
			t.Fatal(err)
		}
		if accepted = r.status == http.StatusAccepted; accepted {
			acked = append(acked, event{pr.ds, pr.lines[0]})
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !accepted {
		t.Fatal("no 202 within 10s of NATS coming back")
	}
	if code, body := getStatus(t, p.base+"/ready"); code != http.StatusOK {
		t.Errorf("GET /ready after NATS came back: got %d %s; want 200", code, body)
	}
	missing, dups, _ := awaitAll(t, fb, acked, 30*time.Second)
	t.Logf("QUEUE backpressure_outage: acked=%d missing=%d duplicates=%d", len(acked), missing, dups)
	if missing > 0 {
		t.Errorf("%d acknowledged events never reached upstream", missing)
	}
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Errorf("exit status %d; want 0", code)
	}
}

// TestE2EQueueWait: wait=true through the queue answers once the replica
// that delivered the rows reports back over NATS, with upstream's counts,
// or with upstream's refusal (403) for a permanent failure.
func TestE2EQueueWait(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	fb := fakebird.NewTB(t, fakebird.Options{}) // any token: pass-through mode
	fb.SetFault(fakebird.ForDatasource("queue_denied", fakebird.Always(fakebird.Response{Status: 403})))
	env := func() map[string]string {
		e := queueEnv(fb, ns.URL(), "WAIT_TIMEOUT", "15s", "TOKEN_DENY_TTL", "0s")
		delete(e, "TINYBIRD_TOKEN")
		delete(e, "AUTHORIZATION_TOKEN")
		return e
	}
	p1 := startProxy(t, env())
	p2 := startProxy(t, env())
	wait := func(base, ds string, lines ...string) (int, string) {
		r, err := post{ds: ds, token: clientToken, wait: true, lines: lines}.send(http.DefaultClient, base)
		if err != nil {
			t.Fatal(err)
		}
		return r.status, string(r.body)
	}
	var wg sync.WaitGroup
	for i := range 6 { // both replicas accept; either may deliver
		wg.Go(func() {
			base := []string{p1.base, p2.base}[i%2]
			lines := []string{}
			for j := range i + 1 {
				lines = append(lines, fmt.Sprintf(`{"wait":%d,"j":%d}`, i, j))
			}
			code, body := wait(base, "queue_wait", lines...)
			if code != http.StatusOK || !strings.Contains(body, fmt.Sprintf(`"successful_rows":%d`, i+1)) {
				t.Errorf("wait=true with %d rows: got %d %s; want 200 with successful_rows %d", i+1, code, body, i+1)
			}
		})
	}
	wg.Wait()
	code, body := wait(p1.base, "queue_denied", `{"a":1}`)
	if code != http.StatusForbidden {
		t.Errorf("wait=true refused upstream: got %d %s; want 403", code, body)
	}
	if n := fb.RowCountFor("queue_wait"); n != 21 {
		t.Errorf("got %d rows upstream; want 21", n)
	}
	for _, p := range []*child{p1, p2} {
		p.sigterm()
		if code := p.exitStatus(30 * time.Second); code != 0 {
			t.Errorf("proxy exited %d after SIGTERM; want 0", code)
		}
		assertNoSecrets(t, p.stderr.String(), clientToken)
	}
}

// TestE2EQueueMaxDeliver: a message delivered QUEUE_MAX_DELIVER times
// without being acknowledged (here its replicas keep dying while upstream
// fails) is dead-lettered with reason max_deliver, not looped forever.
func TestE2EQueueMaxDeliver(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.SetFault(fakebird.Always(fakebird.Response{Status: 500}))
	dead := t.TempDir()
	env := func() map[string]string {
		return queueEnv(fb, ns.URL(), "QUEUE_MAX_DELIVER", "2", "DEAD_LETTER_DIR", dead, "FLUSH_INTERVAL", "50")
	}
	a := startProxy(t, env())
	lines := []string{`{"doomed":1}`, `{"doomed":2}`, `{"doomed":3}`}
	post{ds: "md", token: clientToken, lines: lines}.mustAccept(t, newClient(false), a.base)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := fb.WaitRequests(ctx, 1); err != nil { // delivery 1 reached the flusher
		t.Fatal(err)
	}
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-a.done
	b := startProxy(t, env()) // gets delivery 2 after the ack wait: the last one allowed
	// The record in md.errors.jsonl is written after the rows are synced:
	// once it is there, both files are whole. The redelivery comes after
	// QUEUE_ACK_WAIT (2s).
	var meta []byte
	poll.Until(t, "the dead letter's record", func() bool {
		meta, _ = os.ReadFile(filepath.Join(dead, "md.errors.jsonl"))
		return len(meta) > 0
	})
	if !strings.Contains(string(meta), `"reason":"max_deliver"`) {
		t.Errorf("md.errors.jsonl: got %s; want reason max_deliver", meta)
	}
	rows, err := os.ReadFile(filepath.Join(dead, "md.ndjson"))
	if err != nil || string(rows) != strings.Join(lines, "\n")+"\n" {
		t.Fatalf("dead letter md.ndjson: got %q (%v); want the 3 rows", rows, err)
	}
	b.sigterm()
	if code := b.exitStatus(30 * time.Second); code != 0 {
		t.Errorf("exit status %d; want 0", code)
	}
}

// TestE2EQueueForgedMessages: anyone who can publish on the queue's subject
// can put messages in the stream. The bridge checks each as a client's
// request is checked: a datasource name no client could send, a token where
// the mode has none, or a line that is not a JSON object gets the message
// dead-lettered (inside DEAD_LETTER_DIR, whatever its name says) instead
// of sent upstream, and a valid message next to them is delivered.
func TestE2EQueueForgedMessages(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	parent := t.TempDir()
	dead := filepath.Join(parent, "dead")
	p := startProxy(t, queueEnv(fb, ns.URL(), "DEAD_LETTER_DIR", dead, "FLUSH_INTERVAL", "50"))
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	publish := func(ds, token, data string) {
		m := nats.NewMsg("tbproxy.events.forged")
		m.Header.Set("Tbproxy-Datasource", ds)
		if token != "" {
			m.Header.Set("Tbproxy-Token", token)
		}
		m.Data = []byte(data)
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	publish("../outside", "", `{"forged":"path"}`+"\n")
	publish("good", "", `{"forged":"mixed"}`+"\n"+"not json\n")
	publish("good", "a-token-the-proxy-never-sends", `{"forged":"token"}`+"\n")
	publish("good", "", `{"forged":"unterminated"}`)
	publish("good", "", `{"ok":1}`+"\n")
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := fb.WaitRows(ctx, 1); err != nil {
		t.Fatal(err)
	}
	p.waitLog(`"why":"not a tbproxy request: a client token in proxy-token mode"`)
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if rows := fb.Rows(); len(rows) != 1 || string(rows[0].Line) != `{"ok":1}` {
		t.Errorf("upstream got %v; want only the valid row", rows)
	}
	if _, err := os.Stat(filepath.Join(parent, "outside.ndjson")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a forged name wrote outside DEAD_LETTER_DIR (%v)", err)
	}
	var meta string
	files, _ := filepath.Glob(filepath.Join(dead, "*.errors.jsonl"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		meta += string(b)
	}
	// The unterminated message has no whole row to write down: it is only
	// logged and counted.
	if n := strings.Count(meta, `"reason":"malformed"`); n != 3 {
		t.Errorf("dead letters %v hold %d malformed records; want 3:\n%s", files, n, meta)
	}
	if !strings.Contains(p.stderr.String(), "the last line does not end in a newline") {
		t.Error("the unterminated message was not logged")
	}
}

// TestE2EQueueStockMaxPayload: against a stock nats-server (max_payload 1
// MB, below the default MAX_BODY_BYTES), the proxy says so at start, and a
// body too large for one message gets a 413 naming max_payload, not "more
// than the proxy's whole buffer"; smaller bodies are accepted.
func TestE2EQueueStockMaxPayload(t *testing.T) {
	t.Parallel()
	ns := natstest.StartStock(t, true)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	p := startProxy(t, queueEnv(fb, ns.URL()))
	p.waitLog("nats-server's max_payload is below MAX_BODY_BYTES")
	big := post{ds: "big", token: clientToken}
	for i := range 2000 {
		big.lines = append(big.lines, fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("x", 900)))
	}
	r, err := big.send(newClient(false), p.base)
	if err != nil || r.status != http.StatusRequestEntityTooLarge || !strings.Contains(string(r.body), "max_payload") {
		t.Fatalf("a 1.9 MB body: got %v %d %s; want 413 naming max_payload", err, r.status, r.body)
	}
	post{ds: "small", token: clientToken, lines: []string{`{"a":1}`}}.mustAccept(t, newClient(false), p.base)
}

// TestE2EQueueWithFileSink: with the file sink (no client token goes
// upstream), requests through the queue carry no token and the bridge
// delivers them: it asks the same question of the configuration as the
// front door does.
func TestE2EQueueWithFileSink(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	sink := t.TempDir()
	p := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": "file://" + sink, "AUTHORIZATION_TOKEN": clientToken,
		"QUEUE_URL": ns.URL(), "QUEUE_MAX_BYTES": "256MiB", "FLUSH_INTERVAL": "50", "DEAD_LETTER_DIR": t.TempDir()})
	post{ds: "sunk", token: clientToken, lines: []string{`{"a":1}`, `{"a":2}`}}.mustAccept(t, newClient(false), p.base)
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if got, err := os.ReadFile(filepath.Join(sink, "sunk.ndjson")); err != nil || string(got) != `{"a":1}`+"\n"+`{"a":2}`+"\n" {
		t.Errorf("sink file: %q, %v; want both rows", got, err)
	}
}
