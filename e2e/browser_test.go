package e2e

// Real-browser CORS test: headless Chromium loads a page from one
// 127.0.0.1 origin whose script posts an event to the proxy at another
// origin, as Tinybird's tracker (flock.js) does: POST
// /v0/events?name=...&token=... with Content-Type: application/json, which
// makes the browser send a preflight first. The page writes what fetch()
// returned into its DOM; Chromium's --dump-dom hands that back to the test.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"html/template"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/logbuf"
)

const browserDatasource = "browser_events"

// browserPage is what the page's script is told; html/template renders it
// as a JavaScript object literal.
type browserPage struct {
	Proxy      string `json:"proxy"`
	Datasource string `json:"datasource"`
	GoodToken  string `json:"goodToken"`
	BadToken   string `json:"badToken"`
	Event      string `json:"event"`
}

var browserPageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>tbproxy CORS</title></head>
<body><pre id="result">pending</pre>
<script>
const cfg = {{.}};
async function send(token) {
  const url = cfg.proxy + "/v0/events?name=" + encodeURIComponent(cfg.datasource) +
    "&token=" + encodeURIComponent(token);
  try {
    const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: cfg.event});
    return {status: r.status, contentType: r.headers.get("Content-Type") || "", body: await r.text()};
  } catch (e) {
    return {error: e.name + ": " + e.message};
  }
}
(async () => {
  const out = {origin: location.origin};
  out.good = await send(cfg.goodToken);
  out.bad = await send(cfg.badToken);
  out.done = true;
  document.getElementById("result").textContent = JSON.stringify(out);
})();
</script></body></html>
`))

// browserFetch is one fetch() as the page saw it: status and body, or the
// error fetch rejected with.
type browserFetch struct {
	Status      int    `json:"status"`
	ContentType string `json:"contentType"`
	Body        string `json:"body"`
	Error       string `json:"error"`
}

type browserResult struct {
	Origin string       `json:"origin"`
	Good   browserFetch `json:"good"` // the client token
	Bad    browserFetch `json:"bad"`  // a wrong token
	Done   bool         `json:"done"`
}

// browserFindChromium returns the browser's path. Without one the test is skipped
// locally but fails under CI, where .ci/run installs it.
func browserFindChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found on PATH; .ci/run installs Debian's chromium package")
	}
	t.Skip("chromium not found on PATH: install it (apt-get install chromium) to run the browser CORS test")
	return ""
}

// browserRun loads pageURL in a fresh headless Chromium and returns the
// page's result once its script has finished.
func browserRun(t *testing.T, bin, pageURL string) browserResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", // CI containers may have a small /dev/shm
		"--user-data-dir="+t.TempDir(),
		// Virtual time does not advance while fetches are pending, so the
		// DOM is dumped after the script's requests complete.
		"--virtual-time-budget=10000",
		"--dump-dom", pageURL)
	// Its own process group, so a timeout or a straggler (renderer, zygote)
	// is killed with it and leaves nothing writing into the temp dir.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout bytes.Buffer
	stderr := new(logbuf.Buffer)
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // only stragglers of our group
	}
	t.Logf("chromium ran %v", time.Since(start).Round(time.Millisecond))
	fail := func(format string, args ...any) {
		t.Helper()
		t.Logf("chromium stdout:\n%s", stdout.String())
		t.Logf("chromium stderr (last 4 KB):\n%s", browserTail(stderr.String(), 4096))
		t.Fatalf(format, args...)
	}
	if err != nil {
		fail("chromium: %v (context: %v)", err, ctx.Err())
	}
	dom := stdout.String()
	const open, end = `<pre id="result">`, `</pre>`
	i := strings.Index(dom, open)
	if i < 0 {
		fail("the dumped DOM has no result element")
	}
	text, _, ok := strings.Cut(dom[i+len(open):], end)
	if !ok {
		fail("the dumped DOM's result element is not closed")
	}
	var r browserResult
	if err := json.Unmarshal([]byte(html.UnescapeString(text)), &r); err != nil || !r.Done {
		fail("the page's script did not finish: result %q (%v)", text, err)
	}
	return r
}

func browserRows(rows []fakebird.Row) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "[%s %s]", r.Datasource, r.Line)
	}
	return fmt.Sprintf("%d: %s", len(rows), b.String())
}

func browserTail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func TestBrowserCORS(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the built binary and a browser (skipped with -short)")
	}
	t.Parallel()
	bin := browserFindChromium(t)
	if out, err := exec.Command(bin, "--version").Output(); err == nil {
		t.Logf("browser: %s", strings.TrimSpace(string(out)))
	}

	// The page's own origin: http://127.0.0.1:<page port>, never the proxy's.
	pages := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/page" {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := browserPageTmpl.Execute(w, browserPage{Proxy: q.Get("proxy"), Datasource: browserDatasource,
			GoodToken: clientToken, BadToken: "wrong-" + clientToken, Event: q.Get("event")}); err != nil {
			t.Errorf("page: %v", err)
		}
	}))
	t.Cleanup(pages.Close)
	pageOrigin := pages.URL

	cases := []struct {
		name, origins string // CORS_ALLOWED_ORIGINS; empty: the default, *
		allowed       bool
	}{
		{name: "default_any_origin", allowed: true},
		{name: "listed_origin", origins: "http://example.com, " + pageOrigin, allowed: true},
		{name: "other_origin", origins: "http://example.com", allowed: false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
			env := map[string]string{
				"TINYBIRD_BASE_URL":   fb.URL(),
				"TINYBIRD_TOKEN":      upstreamToken,
				"AUTHORIZATION_TOKEN": clientToken,
				"FLUSH_INTERVAL":      "50",
			}
			if tc.origins != "" {
				env["CORS_ALLOWED_ORIGINS"] = tc.origins
			}
			p := startProxy(t, env)
			event := fmt.Sprintf(`{"case":%q,"path":"/pricing","s":"Zürich 東京"}`, tc.name)
			r := browserRun(t, bin, pages.URL+"/page?"+url.Values{"proxy": {p.base}, "event": {event}}.Encode())
			t.Logf("page result: %+v", r)
			if r.Origin != pageOrigin || r.Origin == p.base {
				t.Fatalf("page origin %q, proxy %s: want two different 127.0.0.1 origins", r.Origin, p.base)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()

			if !tc.allowed {
				for _, f := range []browserFetch{r.Good, r.Bad} {
					if !strings.HasPrefix(f.Error, "TypeError") {
						t.Errorf("fetch from a disallowed origin: got %+v; want it rejected with a TypeError", f)
					}
				}
				// The preflight reached the proxy and was refused; the POST
				// itself never did.
				if n := metricSum(t, p, "tbproxy_http_requests_total", `handler="events"`, `code="403"`); n < 1 {
					t.Errorf("got %v events requests answered 403; want the refused preflight", n)
				}
				if n := metricSum(t, p, "tbproxy_http_requests_total", `handler="events"`, `code="202"`); n != 0 {
					t.Errorf("got %v events requests answered 202; want 0", n)
				}
				if n := metricSum(t, p, "tbproxy_requests_refused_total"); n != 0 {
					t.Errorf("got %v POSTs refused; want 0: the browser must not send the POST", n)
				}
				if n := metricSum(t, p, "tbproxy_events_accepted_total"); n != 0 {
					t.Errorf("got %v events accepted; want 0", n)
				}
				// Upstream: a marker sent without Origin arrives alone, one
				// flush after the browser's attempts.
				marker := post{ds: browserDatasource, token: clientToken, lines: []string{`{"marker":true}`}}
				marker.mustAccept(t, newClient(false), p.base)
				if err := fb.WaitRows(ctx, 1); err != nil {
					t.Fatal(err)
				}
				if rows := fb.Rows(); len(rows) != 1 || string(rows[0].Line) != marker.lines[0] {
					t.Errorf("got rows upstream %s; want only the marker", browserRows(rows))
				}
				return
			}

			if g := r.Good; g.Error != "" || g.Status != http.StatusAccepted ||
				g.Body != `{"successful_rows":1,"quarantined_rows":0}` || !strings.HasPrefix(g.ContentType, "application/json") {
				t.Errorf("POST with the client token: the page saw %+v; want 202 application/json {\"successful_rows\":1,\"quarantined_rows\":0}", g)
			}
			var e struct {
				Error string `json:"error"`
			}
			if b := r.Bad; b.Error != "" || b.Status != http.StatusForbidden || !strings.HasPrefix(b.ContentType, "application/json") ||
				json.Unmarshal([]byte(b.Body), &e) != nil || e.Error == "" {
				t.Errorf("POST with a wrong token: the page saw %+v; want 403 with a readable JSON error", b)
			}
			if n := metricSum(t, p, "tbproxy_http_requests_total", `handler="events"`, `code="204"`); n < 1 {
				t.Errorf("got %v preflights answered 204; want the browser's preflight", n)
			}
			if t.Failed() {
				t.FailNow() // no use waiting for rows upstream
			}
			if err := fb.WaitRows(ctx, 1); err != nil {
				t.Fatal(err)
			}
			rows := fb.Rows()
			if len(rows) != 1 || string(rows[0].Line) != event || rows[0].Datasource != browserDatasource || rows[0].Token != upstreamToken {
				t.Errorf("got rows upstream %s; want the one event %s in %s", browserRows(rows), event, browserDatasource)
			}
			assertNoSecrets(t, p.stderr.String(), upstreamToken, clientToken)
		})
	}
}
