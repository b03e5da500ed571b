package e2e

// The proxy's promise, end to end: what it acknowledged reaches upstream
// once, byte-identical, through a SIGTERM drain, back-pressure and the file
// sink; a drain that runs out of time and an invalid configuration say so
// in the exit status.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
)

func TestE2EDeliversAndDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL":   fb.URL(),
		"TINYBIRD_TOKEN":      upstreamToken,
		"AUTHORIZATION_TOKEN": "another-client-token, " + clientToken,
		"FLUSH_INTERVAL":      "1h", // with the default BATCH_SIZE only the drain sends
		"SHUTDOWN_TIMEOUT":    "20s",
	})

	datasources := []string{"e2e_alpha", "e2e_beta", "e2e_gamma"}
	const clients, perClient = 8, 250
	var (
		mu    sync.Mutex
		acked []event
		wg    sync.WaitGroup
	)
	client := newClient(true)
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 42))
			for seq, req := 0, 0; seq < perClient; req++ {
				pr := post{ds: datasources[rng.IntN(len(datasources))], token: clientToken,
					tokenQuery: req%3 == 0, gzip: req%2 == 1, noFinalLine: req%5 == 0}
				for range min(1+rng.IntN(20), perClient-seq) {
					pr.lines = append(pr.lines, fmt.Sprintf(`{"client":%d,"seq":%d,"s":"Zürich 東京"}`, c, seq))
					seq++
				}
				r, err := pr.send(client, p.base)
				want := fmt.Sprintf(`{"successful_rows":%d,"quarantined_rows":0}`, len(pr.lines))
				if err != nil || r.status != http.StatusAccepted || string(r.body) != want {
					t.Errorf("client %d: got %v %d %s; want 202 %s", c, err, r.status, r.body, want)
					return
				}
				mu.Lock()
				for _, l := range pr.lines {
					acked = append(acked, event{pr.ds, l})
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if n := fb.RequestCount(); n != 0 {
		t.Fatalf("got %d upstream requests before SIGTERM; want 0 with FLUSH_INTERVAL=1h", n)
	}
	// Connections Go dialled but never used would hold fasthttp's shutdown
	// for 5s (see the report); close them so the timing is steady.
	client.CloseIdleConnections()

	// A request whose body is still to come when SIGTERM arrives: its
	// "100 Continue" proves the proxy is reading it.
	held, err := net.Dial("tcp", strings.TrimPrefix(p.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(20 * time.Second))
	heldLine, heldR := `{"client":"held","seq":0}`+"\n", bufio.NewReader(held)
	fmt.Fprintf(held, "POST /v0/events?name=e2e_alpha HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n", clientToken, len(heldLine))
	if resp, err := http.ReadResponse(heldR, nil); err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("held request: got %v %v; want 100 Continue", resp, err)
	}

	p.sigterm()

	// New connections after SIGTERM get 202 (signal not handled yet: then
	// the event must be delivered), 503 JSON, or are refused once the
	// listener is closed.
	late, maybe := newClient(false), map[event]bool{}
	var n202, n503 int
	refused := false
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 5000 && !refused && time.Now().Before(deadline); i++ {
		pr := post{ds: "e2e_alpha", token: clientToken, lines: []string{fmt.Sprintf(`{"client":"late","seq":%d}`, i)}}
		r, err := pr.send(late, p.base)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			refused = true
		case err != nil: // e.g. reset from the closing listener's backlog
			maybe[event{pr.ds, pr.lines[0]}] = true
		case r.status == http.StatusAccepted:
			n202++
			acked = append(acked, event{pr.ds, pr.lines[0]})
		case r.status == http.StatusServiceUnavailable:
			n503++
			assertJSONError(t, r)
		default:
			t.Errorf("POST after SIGTERM: got %d %s; want 202, 503 or connection refused", r.status, r.body)
		}
	}
	t.Logf("after SIGTERM: %d accepted, %d refused with 503, then connection refused: %v", n202, n503, refused)
	if !refused {
		t.Error("still accepting connections 10s after SIGTERM")
	}

	// The held request completes after the listener closed, hence after the
	// buffer closed: it must get 503 and its event must not go upstream.
	if _, err := io.WriteString(held, heldLine); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(heldR, nil)
	if err != nil {
		t.Fatalf("held request: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if refused && resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("request completed after the listener closed: got %d %s; want 503", resp.StatusCode, body)
	}
	assertJSONError(t, reply{resp.StatusCode, resp.Header, body})

	if got := p.exitStatus(30 * time.Second); got != 0 {
		t.Fatalf("got exit status %d; want 0", got)
	}
	assertDelivered(t, fb.Rows(), acked, maybe, upstreamToken)
	assertNoSecrets(t, p.stderr.String(), upstreamToken, clientToken)
}

func TestE2EShutdownTimeoutExitsNonZero(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.SetFault(fakebird.Always(fakebird.Response{Status: 500}))
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL":   fb.URL(),
		"TINYBIRD_TOKEN":      upstreamToken,
		"AUTHORIZATION_TOKEN": clientToken,
		"FLUSH_INTERVAL":      "20",
		"RETRY_MIN_BACKOFF":   "20ms",
		"RETRY_MAX_BACKOFF":   "100ms",
		"SHUTDOWN_TIMEOUT":    "1s",
	})
	client := newClient(true)
	sent := 0
	for i, n := range []int{1, 2, 4} {
		pr := post{ds: "e2e_lost", token: clientToken, tokenQuery: i == 1, gzip: i == 2}
		for range n {
			pr.lines = append(pr.lines, fmt.Sprintf(`{"n":%d}`, sent))
			sent++
		}
		pr.mustAccept(t, client, p.base)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := fb.WaitRequests(ctx, 2); err != nil { // the proxy tried, and retried
		t.Fatal(err)
	}

	p.sigterm()
	if got := p.exitStatus(15 * time.Second); got != 1 {
		t.Errorf("got exit status %d; want 1 (acknowledged events were lost)", got)
	}
	stderr := p.stderr.String()
	found := 0
	for _, l := range strings.Split(stderr, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["reason"] == "shutdown_timeout" {
			if found++; m["level"] != "ERROR" || m["events"] != float64(sent) {
				t.Errorf("got log line %s; want level ERROR and events %d", l, sent)
			}
		}
	}
	if found != 1 {
		t.Errorf("got %d log lines with reason shutdown_timeout; want 1", found)
	}
	if n := fb.RowCount(); n != 0 {
		t.Errorf("got %d rows upstream; want 0", n)
	}
	assertNoSecrets(t, stderr, upstreamToken, clientToken)
}

func TestE2EInvalidConfigNamesVariable(t *testing.T) {
	t.Parallel()
	const secret = "tb-secret-do-not-log-5e8a"
	cases := []struct {
		name, wantVar string
		env           map[string]string
	}{
		{"bad_flush_interval", "FLUSH_INTERVAL",
			map[string]string{"FLUSH_INTERVAL": "abc", "TINYBIRD_TOKEN": secret, "AUTHORIZATION_TOKEN": clientToken}},
		{"token_without_authorization_token", "AUTHORIZATION_TOKEN", map[string]string{"TINYBIRD_TOKEN": secret}},
		{"base_url_with_password", "TINYBIRD_BASE_URL", map[string]string{"TINYBIRD_BASE_URL": "ftp://u:" + secret + "@example.com"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.env["PORT"] = "0"
			cmd, stderr := command(t, tc.env)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			kill := time.AfterFunc(10*time.Second, func() { _ = cmd.Process.Kill() })
			_ = cmd.Wait()
			if kill.Stop(); cmd.ProcessState.ExitCode() != 2 {
				t.Errorf("got exit status %d (-1: killed after 10s); want 2", cmd.ProcessState.ExitCode())
			}
			out := stderr.String()
			if !strings.Contains(out, tc.wantVar) {
				t.Errorf("got stderr %q; want it to name %s", out, tc.wantVar)
			}
			assertNoSecrets(t, out, secret, clientToken)
		})
	}
}

func TestE2EFileSink(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile(filepath.Join("testdata", "file_sink.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(src), "\n"), "\n")
	dir := t.TempDir()
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL": "file://" + dir,
		"FLUSH_INTERVAL":    "10",
		"BATCH_SIZE":        "4", // several appends per file
	})

	client := newClient(true)
	want := map[string]*strings.Builder{"e2e_file_a": {}, "e2e_file_b": {}}
	for i := 0; i < len(lines); {
		pr := post{ds: "e2e_file_a", gzip: i%2 == 0, lines: lines[i:min(i+1+i%4, len(lines))]}
		if i%3 == 0 {
			pr.ds = "e2e_file_b"
		}
		pr.mustAccept(t, client, p.base)
		for _, l := range pr.lines {
			want[pr.ds].WriteString(l + "\n")
		}
		i += len(pr.lines)
	}
	// CRLF line ends and blank lines, as a Windows client may send: the file
	// holds the events without the CRs and blank lines.
	post{ds: "e2e_file_a", noFinalLine: true,
		lines: []string{`{"crlf":1}` + "\r", "", "  \r", `{"crlf":2,"s":"a\r\nb"}` + "\r"}}.mustAccept(t, client, p.base)
	want["e2e_file_a"].WriteString(`{"crlf":1}` + "\n" + `{"crlf":2,"s":"a\r\nb"}` + "\n")

	p.sigterm()
	if got := p.exitStatus(20 * time.Second); got != 0 {
		t.Fatalf("got exit status %d; want 0", got)
	}
	for ds, w := range want {
		got, err := os.ReadFile(filepath.Join(dir, ds+".ndjson"))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != w.String() {
			t.Errorf("%s.ndjson: got %q; want %q", ds, got, w.String())
		}
	}
}

func TestE2EBackpressure(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{clientToken}})
	fb.Down()
	// Pass-through mode (no TINYBIRD_TOKEN): each client's token goes upstream.
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL": fb.URL(),
		"BUFFER_SIZE":       "50",
		"BATCH_SIZE":        "7",
		"FLUSH_INTERVAL":    "10",
		"RETRY_MIN_BACKOFF": "20ms",
		"RETRY_MAX_BACKOFF": "200ms",
		"SHUTDOWN_TIMEOUT":  "10s",
	})
	client := newClient(true)
	seq := 0
	next := func() post { // 7 new events
		pr := post{ds: "e2e_pressure", token: clientToken, gzip: seq%2 == 0}
		for range 7 {
			pr.lines = append(pr.lines, fmt.Sprintf(`{"seq":%d}`, seq))
			seq++
		}
		return pr
	}
	var acked []event
	accept := func(pr post) {
		for _, l := range pr.lines {
			acked = append(acked, event{pr.ds, l})
		}
	}

	var full reply
	for i := 0; i < 20 && full.status == 0; i++ {
		pr := next()
		switch r, err := pr.send(client, p.base); {
		case err != nil:
			t.Fatal(err)
		case r.status == http.StatusAccepted:
			accept(pr)
		case r.status == http.StatusTooManyRequests:
			full = r
		default:
			t.Fatalf("POST: got %d %s; want 202 or 429", r.status, r.body)
		}
	}
	if full.status == 0 {
		t.Fatal("got no 429 with BUFFER_SIZE=50 and the upstream down")
	}
	if len(acked) != 49 {
		t.Errorf("got %d events accepted before the 429; want 49 (7 requests of 7 in a buffer of 50)", len(acked))
	}
	h := full.header
	if s, err := strconv.Atoi(h.Get("Retry-After")); err != nil || s < 1 {
		t.Errorf("got Retry-After %q; want whole seconds >= 1", h.Get("Retry-After"))
	}
	if _, err := strconv.Atoi(h.Get("X-RateLimit-Reset")); err != nil || h.Get("X-RateLimit-Limit") != "50" || h.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("got X-RateLimit-Limit %q, -Remaining %q, -Reset %q; want 50, 0 and whole seconds",
			h.Get("X-RateLimit-Limit"), h.Get("X-RateLimit-Remaining"), h.Get("X-RateLimit-Reset"))
	}
	assertJSONError(t, full)
	if resp, err := client.Get(p.base + "/ready"); err != nil {
		t.Error(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("GET /ready with a full buffer: got %d; want 503", resp.StatusCode)
	}

	if err := fb.Up(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := fb.WaitRows(ctx, len(acked)); err != nil {
		t.Fatal(err)
	}
	// Upstream has every held event, so there is room again (one batch in
	// flight per key: the first six batches are released by now). A client
	// honouring Retry-After, with bounded attempts, is accepted.
	pr := next()
	for attempt := 1; ; attempt++ {
		r, err := pr.send(client, p.base)
		if err == nil && r.status == http.StatusAccepted {
			break
		} else if err != nil || r.status != http.StatusTooManyRequests || attempt == 5 {
			t.Fatalf("POST after upstream recovered (attempt %d): got %v %d %s; want 202", attempt, err, r.status, r.body)
		}
		wait, _ := strconv.Atoi(r.header.Get("Retry-After"))
		select {
		case <-time.After(time.Duration(min(max(wait, 1), 5)) * time.Second):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	accept(pr)
	if err := fb.WaitRows(ctx, len(acked)); err != nil {
		t.Fatal(err)
	}

	p.sigterm()
	if got := p.exitStatus(20 * time.Second); got != 0 {
		t.Fatalf("got exit status %d; want 0", got)
	}
	assertDelivered(t, fb.Rows(), acked, nil, clientToken)
	assertNoSecrets(t, p.stderr.String(), clientToken)
}
