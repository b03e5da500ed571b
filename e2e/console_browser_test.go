package e2e

// Real-browser test of the operator console: headless Chromium opens
// /-/status as a person would, answers the Basic challenge with the admin
// token, and renders live data while events keep arriving. Chromium is
// driven over the DevTools protocol on --remote-debugging-pipe (NUL-ended
// JSON on fds 3 and 4), so no WebSocket client is needed.
//
// Why the DevTools protocol and not a URL with credentials
// (http://admin:<token>@host/-/status) and --dump-dom: a page loaded from
// such a URL resolves its relative fetch("api/streams") to a URL that
// carries the credentials too, and fetch() refuses those ("Request cannot
// be constructed from a URL that includes credentials"), so the page never
// refreshes. A person instead gets the browser's Basic prompt; here
// Fetch.authRequired answers it once, for the page, and the page's own
// requests must then ride on the browser's auth cache: any later challenge
// is cancelled, so it would show as a 401 in the page.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// cdpMsg is one DevTools protocol message: a command, its reply, or an event.
type cdpMsg struct {
	ID        int             `json:"id,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// cdpBrowser is one headless Chromium and its DevTools pipe.
type cdpBrowser struct {
	t      *testing.T
	stderr *logbuf.Buffer
	done   chan struct{} // closed when the reader has seen the pipe close

	wmu sync.Mutex // serializes writes to w
	w   *os.File

	mu      sync.Mutex // protects the fields below
	next    int
	waiting map[int]chan cdpMsg
	onEvent func(*cdpBrowser, cdpMsg) // run on the reader goroutine; must not wait for a reply
}

// cdpStart runs bin headless with the DevTools protocol on fds 3 and 4.
// The process group is killed at cleanup.
func cdpStart(t *testing.T, bin string, onEvent func(*cdpBrowser, cdpMsg)) *cdpBrowser {
	t.Helper()
	toChrome, chromeIn, err := os.Pipe() // chromium reads fd 3
	if err != nil {
		t.Fatal(err)
	}
	chromeOut, fromChrome, err := os.Pipe() // chromium writes fd 4
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome}
	// Its own process group, so the renderer and zygote go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	b := &cdpBrowser{t: t, stderr: new(logbuf.Buffer), done: make(chan struct{}), w: chromeIn,
		waiting: map[int]chan cdpMsg{}, onEvent: onEvent}
	cmd.Stderr = b.stderr
	err = cmd.Start()
	toChrome.Close() // the child's ends: it has its own copies now
	fromChrome.Close()
	if err != nil {
		chromeIn.Close()
		chromeOut.Close()
		t.Fatal(err)
	}
	go b.read(chromeOut)
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		chromeIn.Close()
		select {
		case <-b.done:
		case <-time.After(10 * time.Second):
			t.Error("the DevTools pipe stayed open after chromium was killed")
			chromeOut.Close()
		}
		if t.Failed() {
			t.Logf("chromium stderr (last 4 KB):\n%s", browserTail(b.stderr.String(), 4096))
		}
	})
	return b
}

func (b *cdpBrowser) read(r *os.File) {
	defer close(b.done)
	defer r.Close()
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		raw, err := br.ReadBytes(0)
		if err != nil {
			break
		}
		var m cdpMsg
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil {
			continue
		}
		if m.ID != 0 {
			b.mu.Lock()
			ch := b.waiting[m.ID]
			delete(b.waiting, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m
			}
			continue
		}
		b.onEvent(b, m)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, ch := range b.waiting {
		close(ch)
		delete(b.waiting, id)
	}
}

// send writes a command and returns the channel its reply arrives on (nil:
// the reply is not wanted).
func (b *cdpBrowser) send(session, method string, params any, want bool) (chan cdpMsg, error) {
	p, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.next++
	id := b.next
	var ch chan cdpMsg
	if want {
		ch = make(chan cdpMsg, 1)
		b.waiting[id] = ch
	}
	b.mu.Unlock()
	msg, err := json.Marshal(cdpMsg{ID: id, SessionID: session, Method: method, Params: p})
	if err != nil {
		return nil, err
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	_, err = b.w.Write(append(msg, 0))
	return ch, err
}

// notify sends a command whose reply does not matter; for event handlers,
// which run on the reader and so cannot wait for one.
func (b *cdpBrowser) notify(session, method string, params any) {
	_, _ = b.send(session, method, params, false)
}

// call sends a command and decodes its result into out (nil: ignored).
func (b *cdpBrowser) call(session, method string, params, out any) error {
	ch, err := b.send(session, method, params, true)
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case m, ok := <-ch:
		switch {
		case !ok:
			return fmt.Errorf("%s: chromium closed the DevTools pipe", method)
		case m.Error != nil:
			return fmt.Errorf("%s: %s (%d)", method, m.Error.Message, m.Error.Code)
		case out != nil:
			return json.Unmarshal(m.Result, out)
		}
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: no reply in 30s", method)
	}
}

func (b *cdpBrowser) mustCall(session, method string, params, out any) {
	b.t.Helper()
	if err := b.call(session, method, params, out); err != nil {
		b.t.Fatal(err)
	}
}

// consoleDOM is what consoleSnapshotJS reads from the page.
type consoleDOM struct {
	URL     string            `json:"url"`
	Updated int               `json:"updated"`
	Banner  string            `json:"banner"`
	Totals  map[string]string `json:"totals"` // data-total: the card's value text
	Rows    []consoleDOMRow   `json:"rows"`
	Charts  map[string]bool   `json:"charts"` // canvas id: something drawn
	HTML    string            `json:"html"`
}

type consoleDOMRow struct {
	Datasource string            `json:"datasource"`
	TokenID    string            `json:"tokenId"`
	Class      string            `json:"class"`
	Values     map[string]string `json:"values"` // data-field: data-value
	Texts      map[string]string `json:"texts"`  // data-field: shown text
	Spark      bool              `json:"spark"`  // its sparkline drew something
}

func (r consoleDOMRow) int(t *testing.T, field string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(r.Values[field], 10, 64)
	if err != nil {
		t.Fatalf("row %s: %s data-value %q: %v", r.Datasource, field, r.Values[field], err)
	}
	return v
}

// consoleSnapshotJS reads the page; with pixels (substituted for PIXELS)
// it also reads back the canvases, which only the last snapshot does: many
// readbacks make Chromium log a warning that the page would be blamed for.
const consoleSnapshotJS = `((pixels) => {
  const drawn = (c) => {
    if (!pixels) return false;
    if (!c || !c.width || !c.height) return false;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < d.length; i += 4) if (d[i]) return true;
    return false;
  };
  const rows = [...document.querySelectorAll("tr[data-datasource]")].map((tr) => {
    const values = {}, texts = {};
    for (const td of tr.querySelectorAll("td[data-field]")) {
      if (td.dataset.value !== undefined) values[td.dataset.field] = td.dataset.value;
      texts[td.dataset.field] = td.textContent;
    }
    return {datasource: tr.dataset.datasource, tokenId: tr.dataset.tokenId, class: tr.className,
      values, texts, spark: drawn(tr.querySelector("canvas"))};
  });
  const totals = {};
  for (const c of document.querySelectorAll("[data-total]")) if (!c.hidden) totals[c.dataset.total] = c.querySelector(".v").textContent;
  const banner = document.getElementById("banner");
  const charts = {};
  for (const c of document.querySelectorAll("canvas[id]")) charts[c.id] = drawn(c);
  return JSON.stringify({url: location.href, updated: +(document.body.dataset.updated || 0),
    banner: banner && !banner.hidden ? banner.textContent : "", totals, rows, charts,
    html: document.documentElement.outerHTML});
})(PIXELS)`

func (b *cdpBrowser) snapshot(session string, pixels bool) (consoleDOM, error) {
	var res struct {
		Result struct {
			Value string `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := b.call(session, "Runtime.evaluate", map[string]any{
		"expression": strings.Replace(consoleSnapshotJS, "PIXELS", strconv.FormatBool(pixels), 1), "returnByValue": true}, &res); err != nil {
		return consoleDOM{}, err
	}
	if res.ExceptionDetails != nil {
		return consoleDOM{}, fmt.Errorf("snapshot script: %s", res.ExceptionDetails.Text)
	}
	var d consoleDOM
	err := json.Unmarshal([]byte(res.Result.Value), &d)
	return d, err
}

func (d consoleDOM) row(ds string) (consoleDOMRow, bool) {
	for _, r := range d.Rows {
		if r.Datasource == ds {
			return r, true
		}
	}
	return consoleDOMRow{}, false
}

// artifactPath is where a test writes a file worth keeping: under
// $TBPROXY_ARTIFACTS if set, else in a temporary directory.
func artifactPath(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("TBPROXY_ARTIFACTS")
	if dir == "" {
		return filepath.Join(t.TempDir(), name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// TestE2EConsolePageInBrowser: Chromium opens /-/status, is challenged for
// Basic credentials once and answers with the admin token; the page then
// refreshes on its own credentials-free relative fetches, renders a row per
// datasource (a flowing one whose accepted count rises between refreshes,
// a paused one, one whose batches upstream refuses), the totals and the
// charts, shows no error, logs nothing to the console, and never holds a
// token. A screenshot of it is saved as console-page.png.
func TestE2EConsolePageInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the built binary and a browser (skipped with -short)")
	}
	t.Parallel()
	bin := browserFindChromium(t)
	if out, err := exec.Command(bin, "--version").Output(); err == nil {
		t.Logf("browser: %s", strings.TrimSpace(string(out)))
	}

	const refused = "checkouts" // upstream answers 400 for it
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.SetFault(fakebird.ForDatasource(refused, fakebird.Always(fakebird.Response{Status: http.StatusBadRequest,
		Body: `{"error":"column 'amount' is Float64, but row 1 has the String \"12,50\""}`})))
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
		"ADMIN_TOKEN": adminToken, "FLUSH_INTERVAL": "200",
	})
	client := newClient(true)
	event := func(ds string, i int) string {
		return fmt.Sprintf(`{"timestamp":%q,"ds":%q,"i":%d,"session_id":"s-%d","secret_field":"hush"}`,
			time.Now().UTC().Format(time.RFC3339Nano), ds, i, i%7)
	}
	if code, body := adminDo(t, http.MethodPost, p.base+"/-/api/pause?name=signups", adminToken); code != http.StatusOK {
		t.Fatalf("pause signups: %d %s", code, body)
	}
	for i := range 5 {
		post{ds: "page_views", token: clientToken, lines: []string{event("page_views", i), event("page_views", i+100)}}.mustAccept(t, client, p.base)
		post{ds: "clicks", token: clientToken, lines: []string{event("clicks", i)}}.mustAccept(t, client, p.base)
	}
	post{ds: "signups", token: clientToken, lines: []string{event("signups", 0), event("signups", 1)}}.mustAccept(t, client, p.base)
	post{ds: refused, token: clientToken, lines: []string{event(refused, 0), event(refused, 1), event(refused, 2)}}.mustAccept(t, client, p.base)
	poll.Until(t, "the refused batch dropped and page_views delivered", func() bool {
		st := consoleStatus(t, p.base)
		c, _ := consoleStream(st, refused)
		v, _ := consoleStream(st, "page_views")
		return c.Dropped == 3 && v.Delivered > 0
	})

	// Keep events coming while the browser watches: page_views ~8/s,
	// clicks ~4/s, signups ~2/s (held: paused).
	stop := make(chan struct{})
	var senders sync.WaitGroup
	senders.Go(func() {
		tick := time.NewTicker(125 * time.Millisecond)
		defer tick.Stop()
		for i := 1000; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			sends := []post{{ds: "page_views", token: clientToken, lines: []string{event("page_views", i)}}}
			if i%2 == 0 {
				sends = append(sends, post{ds: "clicks", token: clientToken, lines: []string{event("clicks", i)}})
			}
			if i%4 == 0 {
				sends = append(sends, post{ds: "signups", token: clientToken, lines: []string{event("signups", i)}})
			}
			for _, s := range sends {
				if r, err := s.send(client, p.base); err != nil || r.status != http.StatusAccepted {
					t.Errorf("POST %s while the browser runs: %v %d %s", s.ds, err, r.status, r.body)
					return
				}
			}
		}
	})
	stopSenders := sync.OnceFunc(func() { close(stop); senders.Wait() })
	defer stopSenders()

	// What the browser tells: auth challenges, console messages, errors.
	var (
		mu         sync.Mutex // protects challenges and logs
		challenges []string   // URLs Chromium asked credentials for
		logs       []string   // console messages, exceptions, log entries
	)
	b := cdpStart(t, bin, func(b *cdpBrowser, m cdpMsg) {
		switch m.Method {
		case "Fetch.requestPaused":
			var ev struct {
				RequestID string `json:"requestId"`
			}
			if json.Unmarshal(m.Params, &ev) == nil {
				b.notify(m.SessionID, "Fetch.continueRequest", map[string]any{"requestId": ev.RequestID})
			}
		case "Fetch.authRequired":
			var ev struct {
				RequestID     string `json:"requestId"`
				Request       struct{ URL string }
				AuthChallenge struct{ Scheme, Realm, Source string }
			}
			if json.Unmarshal(m.Params, &ev) != nil {
				return
			}
			mu.Lock()
			first := len(challenges) == 0
			challenges = append(challenges, fmt.Sprintf("%s (%s realm %q)", ev.Request.URL, ev.AuthChallenge.Scheme, ev.AuthChallenge.Realm))
			mu.Unlock()
			// Type the credentials once, for the page, as a person would;
			// refuse any later prompt.
			resp := map[string]any{"response": "CancelAuth"}
			if first && strings.EqualFold(ev.AuthChallenge.Scheme, "basic") {
				resp = map[string]any{"response": "ProvideCredentials", "username": "admin", "password": adminToken}
			}
			b.notify(m.SessionID, "Fetch.continueWithAuth", map[string]any{"requestId": ev.RequestID, "authChallengeResponse": resp})
		case "Runtime.consoleAPICalled":
			var ev struct {
				Type string
				Args []struct {
					Value       any
					Description string
				}
			}
			if json.Unmarshal(m.Params, &ev) == nil {
				var parts []string
				for _, a := range ev.Args {
					if a.Value != nil {
						parts = append(parts, fmt.Sprint(a.Value))
					} else {
						parts = append(parts, a.Description)
					}
				}
				mu.Lock()
				logs = append(logs, "console."+ev.Type+": "+strings.Join(parts, " "))
				mu.Unlock()
			}
		case "Runtime.exceptionThrown":
			mu.Lock()
			logs = append(logs, "exception: "+string(m.Params))
			mu.Unlock()
		case "Log.entryAdded":
			var ev struct {
				Entry struct{ Source, Level, Text, URL string }
			}
			if json.Unmarshal(m.Params, &ev) == nil {
				mu.Lock()
				logs = append(logs, fmt.Sprintf("log %s/%s: %s %s", ev.Entry.Source, ev.Entry.Level, ev.Entry.Text, ev.Entry.URL))
				mu.Unlock()
			}
		}
	})

	var target struct {
		TargetID string `json:"targetId"`
	}
	b.mustCall("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	b.mustCall("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached)
	s := attached.SessionID
	b.mustCall(s, "Fetch.enable", map[string]any{"handleAuthRequests": true,
		"patterns": []map[string]any{{"urlPattern": "*", "requestStage": "Request"}}}, nil)
	b.mustCall(s, "Runtime.enable", nil, nil)
	b.mustCall(s, "Log.enable", nil, nil)
	b.mustCall(s, "Page.enable", nil, nil)
	b.mustCall(s, "Emulation.setDeviceMetricsOverride", map[string]any{"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}, nil)
	pageURL := p.base + "/-/status"
	var nav struct {
		ErrorText string `json:"errorText"`
	}
	b.mustCall(s, "Page.navigate", map[string]any{"url": pageURL}, &nav)
	if nav.ErrorText != "" {
		t.Fatalf("navigating to %s: %s", pageURL, nav.ErrorText)
	}

	// waitDOM polls the page until ok holds for its DOM.
	var last consoleDOM
	waitDOM := func(what string, pixels bool, ok func(consoleDOM) bool) consoleDOM {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			d, err := b.snapshot(s, pixels)
			if err == nil {
				last = d
				if d.Banner != "" {
					t.Fatalf("the page shows an error: %s", d.Banner)
				}
				if ok(d) {
					return d
				}
			}
			if time.Now().After(deadline) {
				mu.Lock()
				t.Logf("challenges: %q\nbrowser log:\n%s", challenges, strings.Join(logs, "\n"))
				mu.Unlock()
				t.Fatalf("waiting for %s: last DOM (%v): updated %d, rows %+v, banner %q", what, err, last.Updated, last.Rows, last.Banner)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	allRows := []string{"checkouts", "clicks", "page_views", "signups"}
	early := waitDOM("3 refreshes showing every datasource", false, func(d consoleDOM) bool {
		for _, ds := range allRows {
			if _, ok := d.row(ds); !ok {
				return false
			}
		}
		return d.Updated >= 3
	})
	earlyViews, _ := early.row("page_views")
	earlyAccepted := earlyViews.int(t, "accepted")
	later := waitDOM("page_views accepted rising over 2 more refreshes", false, func(d consoleDOM) bool {
		r, ok := d.row("page_views")
		return ok && d.Updated >= early.Updated+2 && r.int(t, "accepted") > earlyAccepted
	})
	lateViews, _ := later.row("page_views")
	t.Logf("refresh %d: page_views accepted %d; refresh %d: %d", early.Updated, earlyAccepted, later.Updated, lateViews.int(t, "accepted"))

	// Chromium asked for credentials once, for the page; the page's own
	// requests reused them.
	mu.Lock()
	gotChallenges := append([]string(nil), challenges...)
	gotLogs := append([]string(nil), logs...)
	mu.Unlock()
	if len(gotChallenges) != 1 || !strings.HasPrefix(gotChallenges[0], pageURL+" (") || !strings.Contains(gotChallenges[0], "tbproxy console") {
		t.Errorf("Basic challenges: %q; want one, for %s, realm \"tbproxy console\"", gotChallenges, pageURL)
	}
	// One readback of every canvas, after the logs were taken: Chromium
	// warns about repeated readbacks, and that would be this test's doing.
	drawn := waitDOM("the canvases read back", true, func(consoleDOM) bool { return true })
	if later.URL != pageURL {
		t.Errorf("page URL %q; want %q", later.URL, pageURL)
	}

	// The rows, in datasource order, with their states.
	var order []string
	for _, r := range later.Rows {
		order = append(order, r.Datasource)
		if r.TokenID != "" {
			t.Errorf("row %s: data-token-id %q; want none outside pass-through mode", r.Datasource, r.TokenID)
		}
		// What is shown is the value, formatted ("1,234").
		for _, f := range []string{"accepted", "delivered", "held_events", "dropped"} {
			if got, want := strings.ReplaceAll(r.Texts[f], ",", ""), r.Values[f]; got != want {
				t.Errorf("row %s, %s: shows %q for the value %q", r.Datasource, f, r.Texts[f], want)
			}
		}
	}
	if strings.Join(order, " ") != strings.Join(allRows, " ") {
		t.Errorf("rows %q; want %q", order, allRows)
	}
	for _, ds := range []string{"page_views", "clicks"} {
		r, _ := later.row(ds)
		if r.Values["paused"] != "false" || r.int(t, "delivered") == 0 || r.Values["last_status"] != "200" {
			t.Errorf("row %s: %+v; want active, delivered > 0, last status 200", ds, r)
		}
		if r, _ := drawn.row(ds); !r.Spark {
			t.Errorf("row %s: its sparkline drew nothing", ds)
		}
	}
	if r, _ := later.row("signups"); r.Values["paused"] != "true" || !strings.Contains(" "+r.Class+" ", " paused ") ||
		r.Texts["paused"] != "paused" || r.int(t, "held_events") < 2 || r.int(t, "delivered") != 0 {
		t.Errorf("row signups: %+v; want paused (class, badge), its events held, none delivered", r)
	}
	if r, _ := later.row(refused); r.Values["last_status"] != "400" || r.int(t, "dropped") != 3 || r.int(t, "delivered") != 0 ||
		!strings.Contains(r.Values["last_error"], "12,50") {
		t.Errorf("row %s: %+v; want last status 400, 3 dropped, upstream's error", refused, r)
	}
	for _, k := range []string{"accepted_per_second", "delivered_per_second", "buffer_events", "buffer_bytes", "dropped"} {
		if later.Totals[k] == "" {
			t.Errorf("totals card %s missing or empty: %q", k, later.Totals)
		}
	}
	if later.Totals["dropped"] != "3" {
		t.Errorf("Dropped card shows %q; want 3", later.Totals["dropped"])
	}
	for _, id := range []string{"rates", "fill"} {
		if !drawn.Charts[id] {
			t.Errorf("chart %s drew nothing (%v)", id, drawn.Charts)
		}
	}
	for _, secret := range []string{adminToken, clientToken, upstreamToken, "hush"} {
		if strings.Contains(later.HTML, secret) || strings.Contains(later.URL, secret) {
			t.Errorf("the page's DOM holds %q", secret)
		}
	}
	if len(gotLogs) > 0 {
		t.Errorf("the page logged to the browser console:\n%s", strings.Join(gotLogs, "\n"))
	}

	// A screenshot of the page with data.
	var shot struct {
		Data string `json:"data"`
	}
	b.mustCall(s, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	img, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(img))
	if err != nil || cfg.Width != 1280 || cfg.Height != 900 {
		t.Errorf("screenshot: %dx%d %v; want a 1280x900 PNG", cfg.Width, cfg.Height, err)
	}
	path := artifactPath(t, "console-page.png")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(img))

	stopSenders()
	assertNoSecrets(t, p.stderr.String(), clientToken, upstreamToken, adminToken)
}
