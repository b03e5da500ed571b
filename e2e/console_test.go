package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/console"
	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/poll"
)

const adminToken = "admin-secret-5e8c1f0a9d"

// adminGet sends GET url with the admin token as a bearer token ("" for
// none) and returns the status and body.
func adminDo(t *testing.T, method, url, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := newClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func consoleStatus(t *testing.T, base string) console.Status {
	t.Helper()
	code, body := adminDo(t, http.MethodGet, base+"/-/api/streams", adminToken)
	var st console.Status
	if err := json.Unmarshal(body, &st); code != http.StatusOK || err != nil {
		t.Fatalf("GET /-/api/streams: %d %v %s", code, err, body)
	}
	return st
}

func consoleStream(st console.Status, ds string) (console.Stream, bool) {
	for _, s := range st.Streams {
		if s.Datasource == ds {
			return s, true
		}
	}
	return console.Stream{}, false
}

// TestE2EConsole: two datasources; the console's JSON lists both with the
// right counts; a paused one's rows stop arriving upstream while the
// other's flow, and arrive once resumed; with FLUSH_INTERVAL=60000 a flush
// makes held rows arrive at once; no token gets 401, and neither the page
// nor the JSON ever holds a token or an event.
func TestE2EConsole(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
		"ADMIN_TOKEN": adminToken, "FLUSH_INTERVAL": "60000",
	})
	client := newClient(true)
	send := func(ds string, n int) {
		t.Helper()
		for i := range n {
			post{ds: ds, token: clientToken, lines: []string{fmt.Sprintf(`{"ds":%q,"i":%d,"secret_field":"hush"}`, ds, i)}}.mustAccept(t, client, p.base)
		}
	}

	if code, _ := adminDo(t, http.MethodGet, p.base+"/-/api/streams", ""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d; want 401", code)
	}
	if code, _ := adminDo(t, http.MethodGet, p.base+"/-/api/streams", clientToken); code != http.StatusUnauthorized {
		t.Fatalf("a client token: %d; want 401", code)
	}

	send("views", 3)
	send("clicks", 2)
	poll.Until(t, "both datasources listed with their counts", func() bool {
		st := consoleStatus(t, p.base)
		v, ok1 := consoleStream(st, "views")
		c, ok2 := consoleStream(st, "clicks")
		return ok1 && ok2 && v.Accepted == 3 && c.Accepted == 2 && v.HeldEvents == 3 && c.HeldEvents == 2
	})
	if fb.RowCountFor("views")+fb.RowCountFor("clicks") != 0 {
		t.Fatal("rows arrived before the 60 s interval or a flush")
	}

	// Pause one, flush all: only the other's rows arrive.
	if code, body := adminDo(t, http.MethodPost, p.base+"/-/api/pause?name=clicks", adminToken); code != http.StatusOK {
		t.Fatalf("pause: %d %s", code, body)
	}
	if code, body := adminDo(t, http.MethodPost, p.base+"/-/api/flush", adminToken); code != http.StatusOK {
		t.Fatalf("flush: %d %s", code, body)
	}
	poll.Until(t, "views delivered by the flush", func() bool { return fb.RowCountFor("views") == 3 })
	send("views", 2)
	send("clicks", 2)
	adminDo(t, http.MethodPost, p.base+"/-/api/flush", adminToken)
	poll.Until(t, "the new views rows delivered", func() bool { return fb.RowCountFor("views") == 5 })
	st := consoleStatus(t, p.base)
	if c, _ := consoleStream(st, "clicks"); !c.Paused || c.HeldEvents != 4 || fb.RowCountFor("clicks") != 0 {
		t.Fatalf("paused clicks: %+v, %d upstream; want paused, 4 held, none upstream", c, fb.RowCountFor("clicks"))
	}
	if v, _ := consoleStream(st, "views"); v.Delivered != 5 || v.LastStatus != 200 || v.LastDelivery == nil {
		t.Errorf("views: %+v; want 5 delivered, last status 200", v)
	}

	// Resume: a flush of that datasource sends its rows at once.
	adminDo(t, http.MethodPost, p.base+"/-/api/resume?name=clicks", adminToken)
	adminDo(t, http.MethodPost, p.base+"/-/api/flush?name=clicks", adminToken)
	poll.Until(t, "clicks delivered once resumed", func() bool { return fb.RowCountFor("clicks") == 4 })

	_, page := adminDo(t, http.MethodGet, p.base+"/-/status", adminToken)
	_, js := adminDo(t, http.MethodGet, p.base+"/-/api/streams", adminToken)
	for _, secret := range []string{clientToken, upstreamToken, adminToken, "hush"} {
		if strings.Contains(string(page), secret) || strings.Contains(string(js), secret) {
			t.Errorf("the console shows %q", secret)
		}
	}
	// The per-datasource metrics say the same.
	m, err := scrape(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := m[`tbproxy_datasource_delivered_events_total{datasource="clicks"}`]; got != 4 {
		t.Errorf("tbproxy_datasource_delivered_events_total{clicks} = %v; want 4", got)
	}
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	assertNoSecrets(t, p.stderr.String(), clientToken, upstreamToken, adminToken)
}

// TestE2EConsoleOffAndMoved: without ADMIN_TOKEN every /-/ path is 404 and
// never forwarded upstream; with ADMIN_ADDR, /metrics and /-/ move to that
// listener and the public port answers 404 for them.
func TestE2EConsoleOffAndMoved(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	off := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken})
	for _, path := range []string{"/-/status", "/-/api/streams", "/-/api/pause?name=x"} {
		if code, _ := adminDo(t, http.MethodGet, off.base+path, adminToken); code != http.StatusNotFound {
			t.Errorf("console off, GET %s: %d; want 404", path, code)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	moved := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken,
		"AUTHORIZATION_TOKEN": clientToken, "ADMIN_TOKEN": adminToken, "ADMIN_ADDR": addr})
	for _, path := range []string{"/metrics", "/-/status", "/-/api/streams"} {
		if code, _ := adminDo(t, http.MethodGet, moved.base+path, adminToken); code != http.StatusNotFound {
			t.Errorf("public port, GET %s with ADMIN_ADDR set: %d; want 404", path, code)
		}
	}
	admin := "http://" + addr
	poll.Until(t, "the admin listener", func() bool {
		code, body := adminDo(t, http.MethodGet, admin+"/metrics", "")
		return code == http.StatusOK && strings.Contains(string(body), "tbproxy_events_accepted_total")
	})
	if code, _ := adminDo(t, http.MethodGet, admin+"/-/api/streams", ""); code != http.StatusUnauthorized {
		t.Errorf("admin listener without the token: %d; want 401", code)
	}
	if st := consoleStatus(t, admin); st.Totals.BufferMaxEvents == 0 {
		t.Errorf("admin listener's JSON: %+v", st.Totals)
	}
	if code, _ := adminDo(t, http.MethodGet, admin+"/v0/events", ""); code != http.StatusNotFound {
		t.Errorf("admin listener, /v0/events: %d; want 404: it serves only /metrics and /-/", code)
	}
	if got := fb.Requests(); len(got) != 0 {
		t.Errorf("upstream got %d requests; /-/ must never be forwarded", len(got))
	}
}
