package e2e

// The helpers every process-level test uses: TestMain builds the binary,
// command and startProxy run it, child signals it and reads its log, post
// and reply speak the Events API to it, and scrape and procStatusBytes read
// its metrics and memory.

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/internal/poll"
)

const (
	upstreamToken = "upstream-secret-9f3b1e"
	clientToken   = "client-secret-7c1d42"
)

// binPath is the proxy binary built by TestMain; empty when not built.
var binPath string

// raceBuilt reports whether the test (and so the child TestMain built) runs
// under the race detector, which multiplies memory use.
func raceBuilt() bool {
	bi, ok := debug.ReadBuildInfo()
	return ok && slices.Contains(bi.Settings, debug.BuildSetting{Key: "-race", Value: "true"})
}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // the e2e tests skip themselves
	}
	dir, err := os.MkdirTemp("", "tbproxy-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(func() int {
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "tbproxy")
		args := []string{"build", "-o", bin}
		if raceBuilt() {
			args = append(args, "-race") // race-check the child under load too
		}
		goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first on PATH
		if err != nil {
			goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		// The module's root package is the binary; the tests run in e2e/.
		if out, err := exec.Command(goTool, append(args, "github.com/tbproxy/tbproxy")...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build: %v\n%s", err, out)
			return 1
		}
		binPath = bin
		return m.Run()
	}())
}

// command returns an unstarted child whose environment is exactly env, so
// nothing from the test's own environment leaks in.
func command(t *testing.T, env map[string]string) (*exec.Cmd, *logbuf.Buffer) {
	t.Helper()
	if binPath == "" {
		t.Skip("needs the binary TestMain builds (skipped with -short)")
	}
	cmd := exec.Command(binPath)
	cmd.Env = []string{"GORACE=halt_on_error=1 exitcode=66"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr := new(logbuf.Buffer)
	cmd.Stderr = stderr
	return cmd, stderr
}

// child is one running proxy process.
type child struct {
	t      *testing.T
	cmd    *exec.Cmd
	base   string // http://127.0.0.1:<port>
	stderr *logbuf.Buffer
	done   chan struct{} // closed once the process has exited
}

// startProxy runs the binary on a free loopback port with env (plus PORT
// and LOG_FORMAT=json) and returns once GET /health answers 200. The child
// is killed at cleanup if still running.
func startProxy(t *testing.T, env map[string]string) *child {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	env["PORT"], env["LOG_FORMAT"] = port, "json"
	cmd, stderr := command(t, env)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd, base: "http://127.0.0.1:" + port, stderr: stderr, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
		if strings.Contains(stderr.String(), "WARNING: DATA RACE") {
			t.Error("the proxy reported a data race")
		}
		if t.Failed() {
			t.Logf("proxy stderr:\n%s", stderr)
		}
	})
	// Waiting for the child to listen is the one place with a fixed retry interval.
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
		if resp, err := hc.Get(c.base + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		select {
		case <-c.done:
			t.Fatalf("proxy exited with status %d before it was ready", cmd.ProcessState.ExitCode())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("proxy did not answer GET /health in time")
	return nil
}

func (c *child) sigterm() {
	c.t.Helper()
	c.signal(syscall.SIGTERM)
}

// exitStatus waits up to d for the process to exit and returns its status.
func (c *child) exitStatus(d time.Duration) int {
	c.t.Helper()
	select {
	case <-c.done:
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		c.t.Fatalf("proxy still running %v after SIGTERM", d)
		return -1
	}
}

func (c *child) signal(s os.Signal) {
	c.t.Helper()
	if err := c.cmd.Process.Signal(s); err != nil {
		c.t.Fatal(err)
	}
}

// waitLog waits until the child's log holds substr.
func (c *child) waitLog(substr string) {
	c.t.Helper()
	poll.Until(c.t, fmt.Sprintf("a log line containing %q", substr), func() bool {
		return strings.Contains(c.stderr.String(), substr)
	})
}

func assertNoSecrets(t *testing.T, stderr string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(stderr, s) {
			t.Errorf("stderr contains the secret %q", s)
		}
	}
}

// post is one Events API request as a client sends it.
type post struct {
	ds, token   string
	tokenQuery  bool // ?token= instead of Authorization: Bearer
	gzip        bool
	noFinalLine bool
	wait        bool   // wait=true
	key         string // Idempotency-Key, if not ""
	lines       []string
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (p post) send(client *http.Client, base string) (reply, error) {
	body := []byte(strings.Join(p.lines, "\n"))
	if !p.noFinalLine {
		body = append(body, '\n')
	}
	if p.gzip {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(body)
		zw.Close()
		body = b.Bytes()
	}
	return p.sendBody(client, base, body)
}

// sendBody sends p's request with body as it goes on the wire (already
// encoded as p.gzip says), ignoring p.lines.
func (p post) sendBody(client *http.Client, base string, body []byte) (reply, error) {
	q := url.Values{"name": {p.ds}}
	if p.tokenQuery {
		q.Set("token", p.token)
	}
	if p.wait {
		q.Set("wait", "true")
	}
	req, err := http.NewRequest(http.MethodPost, base+"/v0/events?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	if p.gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	if p.token != "" && !p.tokenQuery {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	if p.key != "" {
		req.Header.Set("Idempotency-Key", p.key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}, err
}

// mustAccept sends p and fails the test unless it got 202.
func (p post) mustAccept(t *testing.T, client *http.Client, base string) {
	t.Helper()
	if r, err := p.send(client, base); err != nil || r.status != http.StatusAccepted {
		t.Fatalf("POST %d events: got %v %d %s; want 202", len(p.lines), err, r.status, r.body)
	}
}

// assertJSONError checks a refusal has Tinybird's {"error":"..."} shape.
func assertJSONError(t *testing.T, r reply) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%d: got Content-Type %q; want application/json", r.status, ct)
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" {
		t.Errorf("%d: got body %q; want {\"error\":...}", r.status, r.body)
	}
}

func newClient(keepAlive bool) *http.Client {
	return &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 16}}
}

// event is one row as the proxy acknowledged it.
type event struct{ ds, line string }

// assertDelivered checks upstream holds exactly the acknowledged events,
// each once, byte-identical, in its datasource, sent with wantToken. Events
// in maybe (the client never learnt the outcome) may be there or not.
func assertDelivered(t *testing.T, rows []fakebird.Row, acked []event, maybe map[event]bool, wantToken string) {
	t.Helper()
	seen := map[event]int{}
	for _, r := range rows {
		seen[event{r.Datasource, string(r.Line)}]++
		if r.Token != wantToken {
			t.Fatalf("row sent upstream with token %q; want %q", r.Token, wantToken)
		}
	}
	var bad []string
	for _, e := range acked {
		if n := seen[e]; n != 1 {
			bad = append(bad, fmt.Sprintf("acknowledged %s %s: got %d times upstream; want 1", e.ds, e.line, n))
		}
		delete(seen, e)
	}
	for e := range seen {
		if !maybe[e] {
			bad = append(bad, fmt.Sprintf("never acknowledged %s %s: got it upstream", e.ds, e.line))
		}
	}
	t.Logf("%d acknowledged, %d rows upstream, %d problems", len(acked), len(rows), len(bad))
	if len(bad) > 0 {
		t.Errorf("%d problems, first ones:\n%s", len(bad), strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
}

// getStatus GETs url and returns the status code and body.
func getStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads the child's /metrics as series ("name{labels}") to values.
func scrape(p *child) (map[string]float64, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(p.base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: got %d", resp.StatusCode)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, nil
}

// metric returns the value of one series ("name{labels}" as /metrics
// writes it) of the child's metrics.
func metric(p *child, series string) (float64, error) {
	m, err := scrape(p)
	if err != nil {
		return 0, err
	}
	v, ok := m[series]
	if !ok {
		return 0, fmt.Errorf("GET /metrics: no series %s", series)
	}
	return v, nil
}

// metricSum sums the samples of name whose labels include every one of
// labels (`code="204"`); a series not exported yet counts 0.
func metricSum(t *testing.T, p *child, name string, labels ...string) float64 {
	t.Helper()
	m, err := scrape(p)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for series, v := range m {
		if series != name && !strings.HasPrefix(series, name+"{") {
			continue
		}
		matched := true
		for _, l := range labels {
			matched = matched && strings.Contains(series, l)
		}
		if matched {
			sum += v
		}
	}
	return sum
}

// procStatusBytes returns a size field of /proc/<pid>/status ("VmRSS", the
// resident set, or "VmHWM", its peak), in bytes.
func procStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s line", pid, field)
}
