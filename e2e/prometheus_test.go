package e2e

// The Grafana dashboard and the alert rules against a real Prometheus: the
// proxy serves traffic that exercises accepts, refusals, an upstream outage,
// a drop and a quarantine while a Prometheus process scrapes it every
// second; then every dashboard query and every alert expression is
// evaluated through Prometheus's HTTP API. A query that errors, or one that
// this traffic must light up but comes back empty or zero, is a dashboard an
// operator would find blank or broken during an incident.

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// promFind returns the prometheus binary's path. Without one the test is
// skipped locally but fails under CI, where .ci/run installs it.
func promFind(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/prometheus"); err == nil {
		return "/usr/bin/prometheus" // Debian's package, if PATH lacks /usr/bin
	}
	if os.Getenv("CI") != "" {
		t.Fatal("prometheus not found; .ci/run installs Debian's prometheus package")
	}
	t.Skip("prometheus not found on PATH: install it (apt-get install prometheus) to test the dashboard and alert queries")
	return ""
}

// promServer is one running Prometheus process.
type promServer struct {
	base string // http://127.0.0.1:<port>
}

// promStart runs Prometheus on a free loopback port, scraping target every
// second as job "tbproxy" (the job the alert rules name) and loading the
// rule file rules, and returns once it is ready. It is killed at cleanup;
// its log is shown if the test failed.
func promStart(t *testing.T, bin, target, rules string) *promServer {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: tbproxy
    static_configs:
      - targets: [%q]
`, rules, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr)
	cmd.Dir = dir // the defaults for consoles and the like are relative
	stderr := new(logbuf.Buffer)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("prometheus log:\n%s", stderr)
		}
	})
	p := &promServer{base: "http://" + addr}
	poll.Until(t, "Prometheus to answer /-/ready", func() bool {
		select {
		case <-done:
			t.Fatalf("prometheus exited with status %d:\n%s", cmd.ProcessState.ExitCode(), stderr)
		default:
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// promSample is one series of an instant query's result.
type promSample struct {
	labels map[string]string
	value  float64
}

// get calls one endpoint of Prometheus's HTTP API and decodes its data,
// returning the API's error (an invalid expression, say) as an error.
func (p *promServer) get(path string, q url.Values, data any) error {
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(p.base + path + "?" + q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var r struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Warnings  []string        `json:"warnings"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s: %d %q: %v", path, resp.StatusCode, body, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, r.ErrorType, r.Error)
	}
	if len(r.Warnings) > 0 {
		return fmt.Errorf("%s: warnings %q", path, r.Warnings)
	}
	return json.Unmarshal(r.Data, data)
}

// query evaluates expr at at (now if zero), as Grafana's instant queries
// and each step of its range queries do, and wants a vector back.
func (p *promServer) query(expr string, at time.Time) ([]promSample, error) {
	q := url.Values{"query": {expr}}
	if !at.IsZero() {
		q.Set("time", strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64))
	}
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"` // [unix time, "value"]
		} `json:"result"`
	}
	if err := p.get("/api/v1/query", q, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("got a %s; want a vector", data.ResultType)
	}
	var out []promSample
	for _, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("value %v: %v", r.Value, err)
		}
		out = append(out, promSample{r.Metric, v})
	}
	return out, nil
}

// promRule is one alert rule as Prometheus loaded and last evaluated it.
type promRule struct {
	Name           string    `json:"name"`
	Query          string    `json:"query"`
	Health         string    `json:"health"`
	LastError      string    `json:"lastError"`
	State          string    `json:"state"`
	LastEvaluation time.Time `json:"lastEvaluation"`
}

func (p *promServer) rules() ([]promRule, error) {
	var data struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get("/api/v1/rules", url.Values{"type": {"alert"}}, &data); err != nil {
		return nil, err
	}
	var out []promRule
	for _, g := range data.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// dashTarget is one query of a dashboard panel.
type dashTarget struct {
	panelID    int
	panel, ref string
	expr       string
}

// dashTargets returns every query of every panel, rows' nested panels included.
func dashTargets(t *testing.T, path string) []dashTarget {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		ID      int    `json:"id"`
		Title   string `json:"title"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
		Panels json.RawMessage `json:"panels"`
	}
	var walk func(raw json.RawMessage)
	var out []dashTarget
	walk = func(raw json.RawMessage) {
		var panels []panel
		if len(raw) == 0 {
			return
		}
		if err := json.Unmarshal(raw, &panels); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		for _, p := range panels {
			for _, q := range p.Targets {
				out = append(out, dashTarget{p.ID, p.Title, q.RefID, q.Expr})
			}
			walk(p.Panels) // a collapsed row holds its panels
		}
	}
	var d struct {
		Panels json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	walk(d.Panels)
	if len(out) < 10 {
		t.Fatalf("%s: found only %d queries", path, len(out))
	}
	return out
}

// promLit is a dashboard query or alert expression that the test's traffic
// must light up: at least one series with a non-zero value, and among
// those, one carrying each of labels ("name=value").
type promLit struct {
	id         int    // the panel id; 0 for an alert
	ref, title string // refId and panel title, or the alert's name
	why        string
	labels     []string
	seen       bool // the dashboard or Prometheus has it
}

// TestPrometheusDashboardAndAlerts: with a real Prometheus scraping the
// proxy through accepts, refusals, a drop, a quarantine and an upstream
// failing with 500s until the buffer is full, every dashboard query and
// alert expression evaluates without error, the ones this traffic concerns
// show it, and Prometheus's own rule evaluation fires TbproxyEventsDropped.
func TestPrometheusDashboardAndAlerts(t *testing.T) {
	t.Parallel()
	bin := promFind(t)
	if out, err := exec.Command(bin, "--version").CombinedOutput(); err == nil {
		t.Logf("%s", strings.SplitN(string(out), "\n", 2)[0])
	}
	rulesPath, err := filepath.Abs(filepath.Join("..", "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	targets := dashTargets(t, filepath.Join("..", "deploy", "grafana", "tbproxy-dashboard.json"))

	// Upstream by datasource: prom_failing answers 500 (retried, so its
	// events stay held and fill the buffer), prom_rejected a final 400 (the
	// batch is dropped), prom_quarantined puts every row in quarantine, and
	// the rest are delivered.
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.SetFault(func(r *fakebird.Request) *fakebird.Response {
		switch r.Datasource {
		case "prom_failing":
			return &fakebird.Response{Status: http.StatusInternalServerError}
		case "prom_rejected":
			return &fakebird.Response{Status: http.StatusBadRequest, Body: `{"error":"column n: wrong type"}`}
		case "prom_quarantined":
			return &fakebird.Response{Body: fmt.Sprintf(`{"successful_rows":0,"quarantined_rows":%d}`, len(r.Lines))}
		}
		return nil
	})
	const bufferSize = 20
	p := startProxy(t, faultEnv(fb.URL(), map[string]string{
		"BUFFER_SIZE":       strconv.Itoa(bufferSize),
		"FLUSH_INTERVAL":    "50",
		"RETRY_MAX_BACKOFF": "200ms",
		// The failing datasource fills the whole buffer, for the buffer
		// panels and alerts: with a fair share it would stop at half.
		"BUFFER_STREAM_SHARE": "1",
	}))
	instance := strings.TrimPrefix(p.base, "http://")
	prom := promStart(t, bin, instance, rulesPath)

	// Every counter needs a sample from before the traffic for rate() and
	// increase() to see it rise.
	poll.Until(t, "Prometheus's first scrape of the proxy", func() bool {
		s, err := prom.query(`up{job="tbproxy"} == 1`, time.Time{})
		return err == nil && len(s) == 1
	})

	client := newClient(true)
	line := func(i int) string { return fmt.Sprintf(`{"timestamp":"2026-11-23T10:00:00Z","n":%d}`, i) }
	for i := range 5 {
		post{ds: "prom_ok", token: clientToken, lines: []string{line(2 * i), line(2*i + 1)}}.mustAccept(t, client, p.base)
	}
	poll.Until(t, "10 events delivered", func() bool { return fb.RowCountFor("prom_ok") == 10 })
	post{ds: "prom_quarantined", token: clientToken, lines: []string{line(0), line(1)}}.mustAccept(t, client, p.base)
	poll.Until(t, "2 events quarantined", func() bool {
		return metricSum(t, p, "tbproxy_quarantined_events_total") == 2
	})
	post{ds: "prom_rejected", token: clientToken, lines: []string{line(0), line(1)}}.mustAccept(t, client, p.base)
	poll.Until(t, "2 events dropped", func() bool {
		return metricSum(t, p, "tbproxy_dropped_events_total", `reason="upstream_rejected"`) == 2
	})

	for _, c := range []struct {
		name string
		post post
		want int
	}{
		{"a wrong token", post{ds: "prom_ok", token: "wrong-" + clientToken, lines: []string{line(0)}}, http.StatusForbidden},
		{"no datasource name", post{ds: "", token: clientToken, lines: []string{line(0)}}, http.StatusBadRequest},
		{"a line that is not JSON", post{ds: "prom_ok", token: clientToken, lines: []string{"not json"}}, http.StatusBadRequest},
	} {
		if r, err := c.post.send(client, p.base); err != nil || r.status != c.want {
			t.Fatalf("POST with %s: got %v %d %s; want %d", c.name, err, r.status, r.body, c.want)
		}
	}

	// Upstream fails for prom_failing: its events are held and retried
	// until the buffer is full and clients get 429.
	full := false
	for i := 0; i < 10*bufferSize && !full; i++ {
		r, err := post{ds: "prom_failing", token: clientToken, lines: []string{line(i)}}.send(client, p.base)
		if err != nil {
			t.Fatal(err)
		}
		full = r.status == http.StatusTooManyRequests
	}
	if !full {
		t.Fatalf("no 429 after %d events with BUFFER_SIZE=%d and upstream failing", 10*bufferSize, bufferSize)
	}
	poll.Until(t, "retries after upstream 500s", func() bool {
		return metricSum(t, p, "tbproxy_upstream_retries_total") >= 2 &&
			metricSum(t, p, "tbproxy_upstream_requests_total", `code="500"`) >= 2
	})

	// Evaluate at the first scrape that started after all of the above, so
	// every query sees the whole story and all queries see the same data.
	mark := time.Now()
	var at time.Time
	poll.Until(t, "a scrape after the traffic", func() bool {
		s, err := prom.query(`timestamp(up{job="tbproxy"})`, time.Time{})
		if err != nil || len(s) != 1 {
			return false
		}
		at = time.UnixMilli(int64(math.Round(s[0].value * 1000)))
		return at.After(mark)
	})

	checkDashboardQueries(t, prom, targets, instance, at)
	checkAlertQueries(t, prom, rulesPath, at)
}

// dashboardLit lists the dashboard queries that the test's traffic lights
// up. The others (dead letters, wait=true timeouts, splits, spool, queue,
// request memory) must evaluate without error but may be empty or zero.
func dashboardLit() []*promLit {
	return []*promLit{
		{id: 2, ref: "A", title: "DROPPED events", why: "prom_rejected's batch was dropped"},
		{id: 4, ref: "A", title: "Quarantined events", why: "prom_quarantined's rows were quarantined"},
		{id: 5, ref: "A", title: "Ingest rate", why: "events were accepted"},
		{id: 6, ref: "A", title: "Buffer fill", why: "prom_failing's events fill the buffer"},
		{id: 6, ref: "B", title: "Buffer fill", why: "prom_failing's events are held"},
		{id: 7, ref: "A", title: "Oldest held event", why: "prom_failing's events are held"},
		{id: 8, ref: "A", title: "DROPPED events by reason", why: "prom_rejected's batch was dropped", labels: []string{"reason=upstream_rejected"}},
		{id: 9, ref: "A", title: "Clients refused: 429 / 503 share", why: "a 429 for the full buffer"},
		{id: 11, ref: "A", title: "Ingest rate", why: "events were accepted"},
		{id: 11, ref: "B", title: "Ingest rate", why: "events were accepted"},
		{id: 12, ref: "A", title: "Requests by status code (events)", why: "accepted, refused and rejected requests",
			labels: []string{"code=202", "code=400", "code=403", "code=429"}},
		{id: 13, ref: "A", title: "Refusals by reason", why: "the refused requests",
			labels: []string{"reason=bad_request", "reason=unauthorized", "reason=invalid_json", "reason=buffer_full"}},
		{id: 13, ref: "B", title: "Refusals by reason", why: "the 429 refused its event", labels: []string{"reason=buffer_full"}},
		{id: 15, ref: "A", title: "Non-ingest requests", why: "Prometheus's own scrapes of /metrics",
			labels: []string{"handler=other", "code=200"}},
		{id: 16, ref: "A", title: "Events in vs out", why: "events were accepted"},
		{id: 16, ref: "B", title: "Events in vs out", why: "events were delivered, quarantined and dropped"},
		{id: 18, ref: "A", title: "Buffer fill", why: "prom_failing's events fill the buffer"},
		{id: 18, ref: "B", title: "Buffer fill", why: "prom_failing's events are held"},
		{id: 19, ref: "A", title: "Buffer contents", why: "prom_failing's events are held"},
		{id: 19, ref: "B", title: "Buffer contents", why: "BUFFER_SIZE"},
		{id: 19, ref: "C", title: "Buffer contents", why: "prom_failing's events are held"},
		{id: 19, ref: "D", title: "Buffer contents", why: "BUFFER_MAX_BYTES"},
		{id: 20, ref: "A", title: "Oldest held event age", why: "prom_failing's events are held"},
		// code=400 too: the flusher creates the series of every status it
		// answers at 0, so rate() sees a first 400 rise from it.
		{id: 22, ref: "A", title: "Upstream requests by code", why: "delivered, failing and rejected batches",
			labels: []string{"code=200", "code=400", "code=500"}},
		{id: 23, ref: "A", title: "Upstream latency", why: "upstream attempts"},
		{id: 23, ref: "B", title: "Upstream latency", why: "upstream attempts"},
		{id: 23, ref: "C", title: "Upstream latency", why: "upstream attempts"},
		{id: 23, ref: "D", title: "Upstream latency", why: "upstream attempts"},
		{id: 24, ref: "A", title: "Retries, splits and in-flight batches", why: "prom_failing's batches are retried"},
		{id: 24, ref: "C", title: "Retries, splits and in-flight batches", why: "prom_failing's batches wait to retry"},
		{id: 26, ref: "A", title: "Delivered vs quarantined", why: "prom_ok's events were delivered"},
		{id: 26, ref: "B", title: "Delivered vs quarantined", why: "prom_quarantined's rows were quarantined"},
		{id: 28, ref: "A", title: "Dropped events by instance", why: "prom_rejected's batch was dropped",
			labels: []string{"reason=upstream_rejected"}},
		{id: 30, ref: "A", title: "Batch size (events)", why: "batches were sent"},
		{id: 30, ref: "B", title: "Batch size (events)", why: "batches were sent"},
		{id: 30, ref: "C", title: "Batch size (events)", why: "batches were sent"},
		{id: 30, ref: "D", title: "Batch size (events)", why: "batches were sent"},
		{id: 31, ref: "A", title: "Batch size (bytes)", why: "batches were sent"},
		{id: 31, ref: "B", title: "Batch size (bytes)", why: "batches were sent"},
		{id: 31, ref: "C", title: "Batch size (bytes)", why: "batches were sent"},
		{id: 33, ref: "A", title: "Resident memory", why: "the process collector, joined on tbproxy_buffer_max_events"},
		{id: 33, ref: "B", title: "Resident memory", why: "BUFFER_MAX_BYTES"},
		{id: 34, ref: "A", title: "Goroutines", why: "the Go collector, joined on tbproxy_buffer_max_events"},
		{id: 35, ref: "A", title: "CPU", why: "the proxy served the traffic, joined on tbproxy_buffer_max_events"},
	}
}

// checkDashboardQueries evaluates every dashboard query at at, with
// $instance set to the scraped instance (escaped as Grafana escapes a
// multi-value variable) and to All (".*", the dashboard's default).
// $__rate_interval is 1m, what Grafana uses for deploy/prometheus's 15s
// scrape interval (4 × scrape interval), so it also spans the traffic.
func checkDashboardQueries(t *testing.T, prom *promServer, targets []dashTarget, instance string, at time.Time) {
	t.Helper()
	lit := dashboardLit()
	escaped := strings.ReplaceAll(regexp.QuoteMeta(instance), `\`, `\\`) // a regex inside a PromQL string
	for _, inst := range []string{escaped, ".*"} {
		vars := strings.NewReplacer("$__rate_interval", "1m", "$__range", "5m", "$__interval", "15s",
			"${instance}", inst, "$instance", inst)
		for _, q := range targets {
			name := fmt.Sprintf("panel %d %q query %s (instance %s)", q.panelID, q.panel, q.ref, inst)
			expr := vars.Replace(q.expr)
			if strings.Contains(expr, "$") {
				t.Errorf("%s: a variable the test does not know in %q", name, q.expr)
				continue
			}
			i := slices.IndexFunc(lit, func(l *promLit) bool { return l.id == q.panelID && l.ref == q.ref })
			if i >= 0 {
				lit[i].seen = true
				if lit[i].title != q.panel {
					t.Errorf("panel %d is %q, the test expects %q: update dashboardLit", q.panelID, q.panel, lit[i].title)
				}
			}
			samples, err := prom.query(expr, at)
			if err != nil {
				t.Errorf("%s: %v\n%s", name, err, expr)
				continue
			}
			if i >= 0 {
				checkLit(t, name, lit[i], expr, samples)
			}
		}
	}
	for _, l := range lit {
		if !l.seen {
			t.Errorf("dashboardLit lists panel %d %q query %s, which the dashboard does not have", l.id, l.title, l.ref)
		}
	}
}

// checkLit fails unless samples hold a non-zero series carrying each of
// l's labels.
func checkLit(t *testing.T, name string, l *promLit, expr string, samples []promSample) {
	t.Helper()
	var nonZero []map[string]string
	for _, s := range samples {
		if s.value != 0 && !math.IsNaN(s.value) {
			nonZero = append(nonZero, s.labels)
		}
	}
	if len(nonZero) == 0 {
		t.Errorf("%s: got %v; want a non-zero series (%s)\n%s", name, samples, l.why, expr)
		return
	}
	for _, want := range l.labels {
		k, v, _ := strings.Cut(want, "=")
		if !slices.ContainsFunc(nonZero, func(m map[string]string) bool { return m[k] == v }) {
			t.Errorf("%s: got %v; want a non-zero series with %s (%s)\n%s", name, samples, want, l.why, expr)
		}
	}
}

// checkAlertQueries evaluates every rule Prometheus loaded from alerts.yml
// at at, and checks Prometheus's own evaluation of the rules.
func checkAlertQueries(t *testing.T, prom *promServer, rulesPath string, at time.Time) {
	t.Helper()
	text, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`(?m)^\s*- alert: (\S+)$`).FindAllStringSubmatch(string(text), -1)
	rules, err := prom.rules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != len(want) {
		t.Errorf("Prometheus loaded %d alert rules; alerts.yml has %d", len(rules), len(want))
	}
	lit := map[string]*promLit{
		"TbproxyEventsDropped":     {title: "TbproxyEventsDropped", why: "prom_rejected's batch was dropped", labels: []string{"reason=upstream_rejected"}},
		"TbproxyEventsQuarantined": {title: "TbproxyEventsQuarantined", why: "prom_quarantined's rows were quarantined"},
		// Its condition holds; it fires only after its `for: 5m`.
		"TbproxyBufferEventsHigh": {title: "TbproxyBufferEventsHigh", why: "prom_failing's events fill the buffer"},
	}
	for _, r := range rules {
		samples, err := prom.query(r.Query, at)
		if err != nil {
			t.Errorf("alert %s: %v\n%s", r.Name, err, r.Query)
			continue
		}
		if l := lit[r.Name]; l != nil {
			l.seen = true
			checkLit(t, "alert "+r.Name, l, r.Query, samples)
		}
	}
	for name, l := range lit {
		if !l.seen {
			t.Errorf("alert %s: Prometheus did not load it", name)
		}
	}

	// Prometheus evaluates the rules itself every second: each must do so
	// without error, and the drop must fire its alert (it has no `for`).
	poll.Until(t, "Prometheus to evaluate every rule after the traffic, firing TbproxyEventsDropped", func() bool {
		rules, err := prom.rules()
		if err != nil {
			return false
		}
		for _, r := range rules {
			if r.Health == "err" {
				t.Fatalf("alert %s: Prometheus's evaluation failed: %s", r.Name, r.LastError)
			}
			if r.Health != "ok" || !r.LastEvaluation.After(at) || (r.Name == "TbproxyEventsDropped" && r.State != "firing") {
				return false
			}
		}
		return len(rules) > 0
	})
}
