package e2e

// The Worker side of the one-URL swap, in Cloudflare's own runtime: the
// example Worker in examples/cloudflare-worker logs each request it serves
// through a real Tinybird client from npm (zod-bird) inside ctx.waitUntil.
// Its test driver (test/run.mjs) bundles it with wrangler, runs it in
// workerd through Miniflare with TINYBIRD_URL pointing at the proxy, and
// fires a few hundred concurrent requests at it. Every event must reach
// fakebird exactly once, byte-identical to what the client library sent.
//
// What the library sent is read off the wire: TINYBIRD_URL is a TCP tap
// that relays workerd's bytes to the proxy unchanged and keeps a copy of
// both directions, so the test knows each request body as the proxy
// received it, and each answer, without trusting the Worker or the library
// to report them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/internal/poll"
)

const (
	workerDir        = "../examples/cloudflare-worker"
	workerDatasource = "api_requests"
	workerRequests   = 300
)

func TestWorkerExampleDeliversExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the built binary, npm and workerd (skipped with -short)")
	}
	t.Parallel()
	node, npm := workerFindNode(t)
	workerNpmCI(t, npm)

	cases := []struct {
		name        string
		proxyEnv    func(fb string) map[string]string
		workerToken string // the Worker's TINYBIRD_TOKEN
	}{
		// The swap exactly as the README shows it: only TINYBIRD_URL
		// changes, the Worker keeps its Tinybird token and the proxy
		// forwards it.
		{name: "passthrough", workerToken: upstreamToken, proxyEnv: func(fb string) map[string]string {
			return map[string]string{"TINYBIRD_BASE_URL": fb}
		}},
		// Proxy-token mode: the Worker's secret becomes a client token,
		// the proxy sends its own.
		{name: "proxy_token", workerToken: clientToken, proxyEnv: func(fb string) map[string]string {
			return map[string]string{"TINYBIRD_BASE_URL": fb, "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
			env := tc.proxyEnv(fb.URL())
			env["SHUTDOWN_TIMEOUT"] = "20s"
			p := startProxy(t, env)
			tap := startWiretap(t, strings.TrimPrefix(p.base, "http://"))

			start := time.Now()
			d := startWorkerDriver(t, node, "http://"+tap.addr(), tc.workerToken)
			ids := d.ids()
			t.Logf("wrangler bundled the Worker and Miniflare served %d requests with it in %v", len(ids), time.Since(start).Round(time.Millisecond))

			// The Worker's ingests run in waitUntil after the responses;
			// workerd runs until every event has reached upstream.
			poll.Until(t, fmt.Sprintf("%d rows in fakebird", len(ids)), func() bool {
				return fb.RowCountFor(workerDatasource) >= len(ids)
			})
			t.Logf("all %d events upstream after %v", len(ids), time.Since(start).Round(time.Millisecond))
			d.stop()
			poll.Until(t, "workerd's connections to the proxy to close", func() bool { return tap.open.Load() == 0 })
			// Once the proxy has drained and exited, nothing more can reach
			// fakebird: a duplicate would be in the rows now.
			p.sigterm()
			if code := p.exitStatus(30 * time.Second); code != 0 {
				t.Fatalf("proxy exited with status %d; want 0", code)
			}

			sent := tap.exchanges(t)
			lines := workerCheckSent(t, sent, ids, tc.workerToken)
			acked := make([]event, len(lines))
			for i, l := range lines {
				acked[i] = event{workerDatasource, l}
			}
			assertDelivered(t, fb.Rows(), acked, nil, upstreamToken)
			t.Logf("%d upstream requests carried the %d events", fb.RequestCount(), len(ids))
		})
	}
}

// workerFindNode returns the paths of node and npm. Without them the test
// is skipped locally but fails under CI.
func workerFindNode(t *testing.T) (node, npm string) {
	t.Helper()
	var missing []string
	node, err := exec.LookPath("node")
	if err != nil {
		missing = append(missing, "node")
	}
	npm, err = exec.LookPath("npm")
	if err != nil {
		missing = append(missing, "npm")
	}
	if len(missing) > 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found on PATH; the Cloudflare Worker test needs Node.js and npm (.ci/run installs Debian's nodejs and npm when missing)", strings.Join(missing, " and "))
		}
		t.Skipf("%s not found on PATH: install Node.js and npm to run the Cloudflare Worker test", strings.Join(missing, " and "))
	}
	if out, err := exec.Command(node, "--version").Output(); err == nil {
		t.Logf("node %s", strings.TrimSpace(string(out)))
	}
	return node, npm
}

// workerNpmCI installs the example's locked dependencies unless
// node_modules already holds exactly them: npm writes its own copy of the
// lockfile, node_modules/.package-lock.json, at the end of every install,
// so one missing or older than package-lock.json means a fresh clone, an
// interrupted install or a changed lockfile.
func workerNpmCI(t *testing.T, npm string) {
	t.Helper()
	lock, err := os.Stat(filepath.Join(workerDir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	if inst, err := os.Stat(filepath.Join(workerDir, "node_modules", ".package-lock.json")); err == nil && !inst.ModTime().Before(lock.ModTime()) {
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	// No install scripts: every binary (workerd, esbuild) comes in its
	// platform's package, and npm 11 does not run unapproved scripts anyway.
	cmd := exec.CommandContext(ctx, npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund")
	cmd.Dir = workerDir
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", workerDir, err, out)
	}
	t.Logf("npm ci took %v", time.Since(start).Round(time.Millisecond))
}

// workerDriver is test/run.mjs running: Miniflare, and workerd under it.
type workerDriver struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr *logbuf.Buffer
	done   chan struct{}
}

func startWorkerDriver(t *testing.T, node, tinybirdURL, token string) *workerDriver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, node, "test/run.mjs")
	cmd.Dir = workerDir
	cmd.Env = append(os.Environ(),
		"TINYBIRD_URL="+tinybirdURL, "TINYBIRD_TOKEN="+token, fmt.Sprintf("REQUESTS=%d", workerRequests),
		"XDG_CONFIG_HOME="+t.TempDir(), // wrangler's logs and settings
		"WRANGLER_SEND_METRICS=false")
	// Its own process group, so workerd (Miniflare's child) goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	d := &workerDriver{t: t, cmd: cmd, stderr: new(logbuf.Buffer), done: make(chan struct{})}
	cmd.Stderr = d.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.stdin, d.stdout = stdin, bufio.NewReader(stdout)
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		cancel()
		<-d.done
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // stragglers of its group
		if t.Failed() {
			t.Logf("worker driver stderr (last 8 KB):\n%s", browserTail(d.stderr.String(), 8192))
		}
	})
	return d
}

// ids reads the driver's one line of output: the id of every event the
// Worker logged.
func (d *workerDriver) ids() []string {
	d.t.Helper()
	type result struct {
		line []byte
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := d.stdout.ReadBytes('\n')
		ch <- result{line, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-time.After(3 * time.Minute):
		d.t.Fatal("the worker driver printed no ids within 3 minutes")
	}
	if r.err != nil {
		<-d.done
		d.t.Fatalf("the worker driver exited with status %d before printing its ids: %v", d.cmd.ProcessState.ExitCode(), r.err)
	}
	var out struct {
		IDs []string `json:"ids"`
	}
	if err := json.Unmarshal(r.line, &out); err != nil {
		d.t.Fatalf("worker driver output %q: %v", r.line, err)
	}
	if len(out.IDs) != workerRequests {
		d.t.Fatalf("got %d ids from the worker driver; want %d", len(out.IDs), workerRequests)
	}
	return out.IDs
}

// stop closes the driver's stdin, which disposes of Miniflare (and kills
// workerd), and waits for it to exit with status 0.
func (d *workerDriver) stop() {
	d.t.Helper()
	d.stdin.Close()
	select {
	case <-d.done:
	case <-time.After(time.Minute):
		d.t.Fatal("the worker driver still running a minute after its stdin closed")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Fatalf("the worker driver exited with status %d", code)
	}
}

// wiretap relays TCP connections to target unchanged and keeps a copy of
// the bytes each way.
type wiretap struct {
	ln     net.Listener
	target string
	open   atomic.Int64 // connections not yet closed both ways
	mu     sync.Mutex
	conns  []*tappedConn
}

type tappedConn struct {
	toTarget, fromTarget bytes.Buffer // written only by the conn's copy goroutines until open drops
}

func startWiretap(t *testing.T, target string) *wiretap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &wiretap{ln: ln, target: target}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				t.Errorf("wiretap: %v", err)
				c.Close()
				continue
			}
			tc := &tappedConn{}
			w.mu.Lock()
			w.conns = append(w.conns, tc)
			w.mu.Unlock()
			w.open.Add(1)
			wg.Go(func() {
				var half sync.WaitGroup
				half.Go(func() { relay(u, c, &tc.toTarget) })
				half.Go(func() { relay(c, u, &tc.fromTarget) })
				half.Wait()
				c.Close()
				u.Close()
				w.open.Add(-1)
			})
		}
	})
	return w
}

// relay copies src to rec and dst until src ends, then half-closes dst so
// the other side sees the end too. rec gets every byte read, even one dst
// no longer takes.
func relay(dst, src net.Conn, rec *bytes.Buffer) {
	_, _ = io.Copy(dst, io.TeeReader(src, rec))
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func (w *wiretap) addr() string { return w.ln.Addr().String() }

// exchange is one HTTP request the Worker sent and the proxy's answer.
type exchange struct {
	method, uri string
	header      http.Header
	body        []byte
	status      int
	answer      []byte
}

// exchanges parses the recorded connections; call it once all are closed.
func (w *wiretap) exchanges(t *testing.T) []exchange {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var all []exchange
	for i, tc := range w.conns {
		reqs := bufio.NewReader(bytes.NewReader(tc.toTarget.Bytes()))
		resps := bufio.NewReader(bytes.NewReader(tc.fromTarget.Bytes()))
		for {
			req, err := http.ReadRequest(reqs)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("wiretap connection %d: request %v", i, err)
			}
			body, err := io.ReadAll(req.Body)
			if err != nil {
				t.Fatalf("wiretap connection %d: request body: %v", i, err)
			}
			ex := exchange{method: req.Method, uri: req.RequestURI, header: req.Header, body: body}
			if resp, err := http.ReadResponse(resps, req); err == nil {
				ex.status = resp.StatusCode
				ex.answer, _ = io.ReadAll(resp.Body)
			}
			all = append(all, ex)
		}
	}
	return all
}

// workerCheckSent checks what the Worker sent over the wire: one request per
// event, as zod-bird builds it, each answered 202, each event's id one of
// ids and every id once. It returns the events' lines as sent.
func workerCheckSent(t *testing.T, sent []exchange, ids []string, token string) []string {
	t.Helper()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	var lines []string
	seen := map[string]int{}
	for i, ex := range sent {
		if ex.method != http.MethodPost || ex.uri != "/v0/events?name="+workerDatasource {
			t.Fatalf("request %d: got %s %s; want POST /v0/events?name=%s", i, ex.method, ex.uri, workerDatasource)
		}
		if got := ex.header.Get("Authorization"); got != "Bearer "+token {
			t.Fatalf("request %d: got Authorization %q; want the Worker's TINYBIRD_TOKEN", i, got)
		}
		if ex.status != http.StatusAccepted || string(ex.answer) != `{"successful_rows":1,"quarantined_rows":0}` {
			t.Errorf("request %d: the proxy answered %d %s; want 202 with one row", i, ex.status, ex.answer)
		}
		if bytes.ContainsAny(ex.body, "\r\n") {
			t.Fatalf("request %d: body %q; want one event per request", i, ex.body)
		}
		var ev struct {
			ID        string `json:"id"`
			Path      string `json:"path"`
			Status    int    `json:"status"`
			City      string `json:"city"`
			UserAgent string `json:"user_agent"`
		}
		if err := json.Unmarshal(ex.body, &ev); err != nil {
			t.Fatalf("request %d: body %q: %v", i, ex.body, err)
		}
		if !want[ev.ID] || ev.Path != "/api/hello" || ev.Status != 200 || ev.City != "Zürich" ||
			!strings.HasPrefix(ev.UserAgent, `tbproxy-worker-e2e/1.0 (request `) {
			t.Fatalf("request %d: event %s is not one the Worker logged for the driver's requests", i, ex.body)
		}
		seen[ev.ID]++
		lines = append(lines, string(ex.body))
	}
	if len(seen) != len(ids) || len(sent) != len(ids) {
		t.Fatalf("the Worker sent %d requests with %d distinct ids; want %d, one per request it served", len(sent), len(seen), len(ids))
	}
	t.Logf("the Worker sent %d events, one request each, every one answered 202; e.g. %s", len(lines), lines[0])
	return lines
}

// TestE2EWorkerIngestIdempotencyKey runs the Worker example's ingest
// (src/ingest.js, what its README shows) with Node.js against the proxy:
// an event sent twice under one key, and one whose first answer was lost
// on the way back (the Worker timed out and retried), are each stored once
// and the repeats told they were replays.
func TestE2EWorkerIngestIdempotencyKey(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the built binary and Node.js (skipped with -short)")
	}
	t.Parallel()
	node, _ := workerFindNode(t)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	p := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken,
		"AUTHORIZATION_TOKEN": clientToken, "FLUSH_INTERVAL": "100"})
	src, err := filepath.Abs(filepath.Join(workerDir, "src", "ingest.js"))
	if err != nil {
		t.Fatal(err)
	}
	script := `
import { ingest } from ` + strconv.Quote("file://"+src) + `;
const env = { TINYBIRD_URL: process.env.TINYBIRD_URL, TINYBIRD_TOKEN: process.env.TINYBIRD_TOKEN };
let lost = false;
// The first answer for e3 never reaches the Worker: the request was stored.
const lossy = async (url, init) => {
  const res = await fetch(url, init);
  if (!lost) { lost = true; throw new Error("connection reset before the answer"); }
  return res;
};
const out = [];
out.push(await ingest(env, "worker_keys", { id: "e1", n: 1 }, "e1"));
out.push(await ingest(env, "worker_keys", { id: "e1", n: 1 }, "e1"));
out.push(await ingest(env, "worker_keys", { id: "e2", n: 2 }, "e2"));
out.push(await ingest(env, "worker_keys", { id: "e3", n: 3 }, "e3", { fetchImpl: lossy }));
console.log(JSON.stringify(out));
`
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--input-type=module", "-e", script)
	cmd.Env = append(os.Environ(), "TINYBIRD_URL="+p.base, "TINYBIRD_TOKEN="+clientToken)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got []struct {
		Successful int  `json:"successful_rows"`
		Replayed   bool `json:"replayed"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node printed %q: %v", out, err)
	}
	want := []bool{false, true, false, true}
	if len(got) != len(want) {
		t.Fatalf("got %d answers; want %d: %s", len(got), len(want), out)
	}
	for i, g := range got {
		if g.Successful != 1 || g.Replayed != want[i] {
			t.Errorf("answer %d: %+v; want 1 row, replayed %v", i, g, want[i])
		}
	}
	p.sigterm()
	if s := p.exitStatus(30 * time.Second); s != 0 {
		t.Fatalf("exit status %d", s)
	}
	var ids []string
	for _, r := range fb.RowsFor("worker_keys") {
		var e struct{ ID string }
		if err := json.Unmarshal(r.Line, &e); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"e1", "e2", "e3"}) {
		t.Fatalf("upstream holds %v; want e1, e2 and e3 once each", ids)
	}
}
