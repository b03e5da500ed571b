package proxy

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/clients"
	"github.com/tbproxy/tbproxy/idempotency"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/limits"
)

const (
	webToken   = "web-token-0123456789"
	apiToken   = "api-token-0123456789"
	plainToken = "unnamed-token-0123"
)

// clientSet builds a CLIENTS_FILE set from JSON with {web} and {api}
// replaced by the digests of webToken and apiToken.
func clientSet(t *testing.T, js string) *clients.Set {
	t.Helper()
	js = strings.ReplaceAll(js, "{web}", clients.HashToken([]byte(webToken)))
	js = strings.ReplaceAll(js, "{api}", clients.HashToken([]byte(apiToken)))
	set, err := clients.Parse([]byte(js))
	if err != nil {
		t.Fatalf("clients.Parse: %v", err)
	}
	return set
}

func authBearer(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token}
}

func TestNamedClients(t *testing.T) {
	set := clientSet(t, `{"clients":[
		{"name":"web","token_sha256":"{web}","datasources":["page_views"]},
		{"name":"api","token_sha256":"{api}","datasources":["api_requests","audit_*"]}]}`)
	ts := startServer(t, Options{Tokens: []string{plainToken}, Clients: set}, buffer.Options{})

	for _, c := range []struct {
		token, ds string
		status    int
		client    string // the stored key's Client
	}{
		{webToken, "page_views", 202, "web"},
		{apiToken, "api_requests", 202, "api"},
		{apiToken, "audit_login", 202, "api"},
		{plainToken, "anything", 202, ""}, // AUTHORIZATION_TOKEN: unnamed, no allow-list
		{webToken, "api_requests", 403, ""},
		{apiToken, "audits", 403, ""},
		{"not-a-client-token", "page_views", 403, ""},
		{"", "page_views", 403, ""},
	} {
		ts.buf.Take(nil)
		h := authBearer(c.token)
		if c.token == "" {
			h = nil
		}
		res := ts.do(t, "POST", "/v0/events?name="+c.ds, h, []byte(`{"a":1}`))
		if res.status != c.status {
			t.Fatalf("%s → %s: got %d %s; want %d", c.token, c.ds, res.status, res.body, c.status)
		}
		if strings.Contains(res.body, c.token) && c.token != "" {
			t.Errorf("%s → %s: body %s holds the token", c.token, c.ds, res.body)
		}
		_, keys := ts.stored()
		if c.status != 202 {
			if len(keys) != 0 {
				t.Errorf("%s → %s: refused but stored %v", c.token, c.ds, keys)
			}
			continue
		}
		if len(keys) != 1 || keys[0].Client != c.client || keys[0].Datasource != c.ds {
			t.Errorf("%s → %s: stored %+v; want client %q", c.token, c.ds, keys, c.client)
		}
	}
	res := ts.do(t, "POST", "/v0/events?name=api_requests", authBearer(webToken), []byte(`{"a":1}`))
	if want := `{"error":"client 'web' may not write to datasource 'api_requests' (its datasources in CLIENTS_FILE)"}`; res.body != want {
		t.Errorf("allow-list refusal: got %s; want %s", res.body, want)
	}
	if got := testutil.ToFloat64(ts.srv.m.clientRefusals.WithLabelValues("web", reasonNotAllowed)); got != 2 {
		t.Errorf("refusals of web for its allow-list: got %v; want 2", got)
	}
	if got := testutil.ToFloat64(ts.srv.m.clientEvents.WithLabelValues("api")); got != 2 {
		t.Errorf("events accepted from api: got %v; want 2", got)
	}

	// A reload takes effect at once: web is gone, api may write anywhere.
	ts.srv.SetClients(clientSet(t, `{"clients":[{"name":"api","token_sha256":"{api}"}]}`))
	if res := ts.do(t, "POST", "/v0/events?name=page_views", authBearer(webToken), []byte(`{"a":1}`)); res.status != 403 {
		t.Errorf("removed client: got %d; want 403", res.status)
	}
	if res := ts.do(t, "POST", "/v0/events?name=anything", authBearer(apiToken), []byte(`{"a":1}`)); res.status != 202 {
		t.Errorf("client without allow-list after reload: got %d %s; want 202", res.status, res.body)
	}
}

// TestClientLimits checks both layers with the headers Tinybird's SDKs
// read, and that a request the buffer refuses gives its events back.
func TestClientLimits(t *testing.T) {
	set := clientSet(t, `{"clients":[
		{"name":"web","token_sha256":"{web}","events_per_minute":10},
		{"name":"api","token_sha256":"{api}","events_per_day":5}]}`)
	var logs logbuf.Buffer
	ts := startServerLogging(t, Options{Clients: set, Limiter: limits.New(limits.Options{})}, buffer.Options{MaxEvents: 12, MaxBytes: 1 << 20},
		slog.New(slog.NewJSONHandler(&logs, nil)))
	post := func(token string, n int) response {
		return ts.do(t, "POST", "/v0/events?name=ds", authBearer(token), []byte(strings.Repeat(`{"a":1}`+"\n", n)))
	}
	check := func(res response, status int, remaining string) {
		t.Helper()
		if res.status != status || res.header.Get("X-RateLimit-Remaining") != remaining {
			t.Fatalf("got %d remaining %q (%s); want %d remaining %s", res.status, res.header.Get("X-RateLimit-Remaining"), res.body, status, remaining)
		}
	}

	res := post(webToken, 4)
	check(res, 202, "6")
	if res.header.Get("X-RateLimit-Limit") != "10" {
		t.Errorf("X-RateLimit-Limit: got %q; want 10", res.header.Get("X-RateLimit-Limit"))
	}
	if reset, err := strconv.Atoi(res.header.Get("X-RateLimit-Reset")); err != nil || reset < 1 || reset > 60 {
		t.Errorf("X-RateLimit-Reset on an accepted request: got %q; want the seconds left in the minute", res.header.Get("X-RateLimit-Reset"))
	}
	check(post(webToken, 6), 202, "0")
	res = post(webToken, 1)
	check(res, 429, "0")
	ra, err := strconv.Atoi(res.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 120 || res.header.Get("X-RateLimit-Reset") != res.header.Get("Retry-After") {
		t.Errorf("refused: Retry-After %q, X-RateLimit-Reset %q; want equal integer seconds in [1, 120]",
			res.header.Get("Retry-After"), res.header.Get("X-RateLimit-Reset"))
	}
	if want := `{"error":"the events_per_minute of client 'web' (10 events) is used up; retry after the time in Retry-After"}`; res.body != want {
		t.Errorf("refused body: got %s; want %s", res.body, want)
	}
	if l := logs.String(); !strings.Contains(l, `"msg":"client over its limit","client":"web","token_id":"","limit":"minute","events_allowed":10`) || strings.Contains(l, webToken) {
		t.Errorf("log: %s; want one warning naming client web and its minute limit, never the token", l)
	}
	if res := post(webToken, 11); res.status != 413 || !strings.Contains(res.body, "events_per_minute") {
		t.Errorf("a request above the limit: got %d %s; want 413 naming events_per_minute", res.status, res.body)
	}

	// The buffer (12 events, 10 held) refuses api's 3: they are given back.
	if res := post(apiToken, 3); res.status != 429 || !strings.Contains(res.body, "buffer is full") {
		t.Fatalf("full buffer: got %d %s; want 429", res.status, res.body)
	}
	if ts.buf.Len() != 10 {
		t.Fatalf("buffer holds %d; want 10", ts.buf.Len())
	}
	ts.buf.Take(nil)
	ts.buf.Release(buffer.Key{Datasource: "ds", Client: "web"}, 10)
	check(post(apiToken, 3), 202, "2")
	res = post(apiToken, 3)
	check(res, 429, "2") // what a smaller request could still take
	if !strings.Contains(res.body, "events_per_day of client 'api'") {
		t.Errorf("day refusal body: %s", res.body)
	}
	now := time.Now().UTC()
	midnight := now.Truncate(24 * time.Hour).Add(24 * time.Hour)
	ra, _ = strconv.Atoi(res.header.Get("Retry-After"))
	if d := time.Duration(ra)*time.Second - midnight.Sub(now); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("day Retry-After %ds; want the %s until UTC midnight", ra, midnight.Sub(now).Round(time.Second))
	}
	check(post(apiToken, 2), 202, "0") // what is left of the day still fits
	if got := testutil.ToFloat64(ts.srv.m.refusedReqs.WithLabelValues(reasonRateLimited)); got != 3 {
		t.Errorf("rate_limited refusals: got %v; want 3", got)
	}
}

func TestPassThroughTokenLimit(t *testing.T) {
	ts := startServer(t, Options{PassThrough: true, Limiter: limits.New(limits.Options{}), TokenLimit: limits.Limit{PerMinute: 3}}, buffer.Options{})
	for i, want := range []int{202, 202, 202, 429} {
		if res := ts.do(t, "POST", "/v0/events?name=ds", authBearer("p.tokenX"), []byte(`{"a":1}`)); res.status != want {
			t.Fatalf("token X request %d: got %d %s; want %d", i, res.status, res.body, want)
		}
	}
	res := ts.do(t, "POST", "/v0/events?name=ds", authBearer("p.tokenY"), []byte(`{"a":1}`))
	if res.status != 202 || res.header.Get("X-RateLimit-Remaining") != "2" {
		t.Fatalf("token Y: got %d remaining %q; want 202 remaining 2", res.status, res.header.Get("X-RateLimit-Remaining"))
	}
	// Without a limit nothing is counted and no header is sent.
	ts2 := startServer(t, Options{PassThrough: true}, buffer.Options{})
	if res := ts2.do(t, "POST", "/v0/events?name=ds", authBearer("p.tokenX"), []byte(`{"a":1}`)); res.header.Get("X-RateLimit-Limit") != "" {
		t.Errorf("no limit: got X-RateLimit-Limit %q; want none", res.header.Get("X-RateLimit-Limit"))
	}
}

func openKeys(t *testing.T) *idempotency.Store {
	t.Helper()
	s, err := idempotency.Open(idempotency.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestIdempotencyKey(t *testing.T) {
	set := clientSet(t, `{"clients":[{"name":"web","token_sha256":"{web}"},{"name":"api","token_sha256":"{api}"}]}`)
	ts := startServer(t, Options{Clients: set, Idempotency: openKeys(t)}, buffer.Options{MaxEvents: 4, MaxBytes: 1 << 20})
	post := func(token, ds, key, body string) response {
		h := authBearer(token)
		if key != "" {
			h["Idempotency-Key"] = key
		}
		return ts.do(t, "POST", "/v0/events?name="+ds, h, []byte(body))
	}
	first := post(webToken, "ds", "k1", "{\"a\":1}\n{\"a\":2}\n")
	if first.status != 202 || first.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first: got %d %v", first.status, first.header)
	}
	// The same events, without the final newline: a repeat.
	again := post(webToken, "ds", "k1", "{\"a\":1}\n{\"a\":2}")
	if again.status != 202 || again.body != first.body || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("repeat: got %d %s %v; want the first answer, replayed", again.status, again.body, again.header)
	}
	if res := post(webToken, "ds", "k1", `{"a":3}`); res.status != 422 || !strings.Contains(res.body, "different body") {
		t.Fatalf("another body: got %d %s; want 422", res.status, res.body)
	}
	if res := post(webToken, "ds", strings.Repeat("k", 257), `{"a":1}`); res.status != 400 || !strings.HasPrefix(res.body, `{"error":"invalid Idempotency-Key`) {
		t.Fatalf("a key too long: got %d %s; want 400", res.status, res.body)
	}
	// Another client, or another datasource: another key.
	if res := post(apiToken, "ds", "k1", `{"a":9}`); res.status != 202 || res.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("another client's k1: got %d %v", res.status, res.header)
	}
	if res := post(webToken, "other", "k1", `{"a":9}`); res.status != 202 || res.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("another datasource's k1: got %d %v", res.status, res.header)
	}
	data, _ := ts.stored()
	if want := "{\"a\":1}\n{\"a\":2}\n{\"a\":9}\n{\"a\":9}\n"; data != want {
		t.Fatalf("stored %q; want %q (k1 once per client and datasource)", data, want)
	}

	ts.buf.Release(buffer.Key{Datasource: "ds", Client: "web"}, 2)
	ts.buf.Release(buffer.Key{Datasource: "ds", Client: "api"}, 1)
	ts.buf.Release(buffer.Key{Datasource: "other", Client: "web"}, 1)

	// A refused request stores nothing and remembers nothing: its retry is
	// stored. The buffer holds 4 events.
	for i := range 4 {
		if res := post(webToken, "ds", "fill"+strconv.Itoa(i), `{"f":1}`); res.status != 202 {
			t.Fatalf("fill: %d", res.status)
		}
	}
	if res := post(webToken, "ds", "k2", `{"b":1}`); res.status != 429 {
		t.Fatalf("full buffer: got %d; want 429", res.status)
	}
	ts.buf.Take(nil)
	ts.buf.Release(buffer.Key{Datasource: "ds", Client: "web"}, 4)
	if res := post(webToken, "ds", "k2", `{"b":1}`); res.status != 202 || res.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry after a refusal: got %d %v; want stored", res.status, res.header)
	}
	if got := testutil.ToFloat64(ts.srv.m.replayed); got != 1 {
		t.Errorf("tbproxy_idempotent_replays_total: got %v; want 1", got)
	}
}

// blockingStore holds every request until release is closed.
type blockingStore struct {
	buf     *buffer.Buffer
	entered chan struct{}
	release chan struct{}
}

func (s *blockingStore) PutWaiting(key buffer.Key, lines [][]byte, w *buffer.Waiter) error {
	s.entered <- struct{}{}
	<-s.release
	return s.buf.PutWaiting(key, lines, w)
}

// TestIdempotencyInFlight: a repeat while the first request is still being
// stored waits for it, up to WAIT_TIMEOUT, and then gets 409.
func TestIdempotencyInFlight(t *testing.T) {
	bopts := buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20}
	buf := buffer.New(bopts)
	st := &blockingStore{buf: buf, entered: make(chan struct{}, 4), release: make(chan struct{})}
	ts := startServer(t, Options{Idempotency: openKeys(t), Store: st, WaitTimeout: 300 * time.Millisecond}, bopts)
	post := func() response {
		return ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Idempotency-Key": "k"}, []byte(`{"a":1}`))
	}
	var wg sync.WaitGroup
	var first response
	wg.Go(func() { first = post() })
	<-st.entered
	if res := post(); res.status != 409 || res.header.Get("Retry-After") != "1" || !strings.Contains(res.body, "still in flight") {
		t.Fatalf("repeat while the first is held past WAIT_TIMEOUT: got %d %s; want 409 with Retry-After 1", res.status, res.body)
	}
	var second response
	wg.Go(func() { second = post() })
	time.Sleep(50 * time.Millisecond) // let the repeat start waiting (either way it must end replayed)
	close(st.release)
	wg.Wait()
	if first.status != 202 || second.status != 202 || second.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("first %d, repeat %d %v; want 202 and a replayed 202", first.status, second.status, second.header)
	}
	if n := buf.Len(); n != 1 {
		t.Fatalf("stored %d events; want 1", n)
	}
}

func TestRefuseStoreStreamShare(t *testing.T) {
	ts := startServer(t, Options{}, buffer.Options{MaxEvents: 10, MaxBytes: 1 << 20, StreamShare: 0.5})
	// Stream b is sending: stream a may hold at most 5.
	if res := ts.do(t, "POST", "/v0/events?name=b", nil, []byte(`{"b":1}`)); res.status != 202 {
		t.Fatal(res.status)
	}
	if res := ts.do(t, "POST", "/v0/events?name=a", nil, []byte(strings.Repeat("{}\n", 5))); res.status != 202 {
		t.Fatal(res.status)
	}
	res := ts.do(t, "POST", "/v0/events?name=a", nil, []byte(`{}`))
	if res.status != 429 || res.header.Get("Retry-After") == "" || !strings.Contains(res.body, "BUFFER_STREAM_SHARE") {
		t.Fatalf("a over its share: got %d %s; want 429 naming BUFFER_STREAM_SHARE", res.status, res.body)
	}
	if res := ts.do(t, "POST", "/v0/events?name=b", nil, []byte(strings.Repeat("{}\n", 3))); res.status != 202 {
		t.Fatalf("b while a is at its share: got %d %s; want 202", res.status, res.body)
	}
	if got := testutil.ToFloat64(ts.srv.m.refusedReqs.WithLabelValues(reasonStreamShare)); got != 1 {
		t.Errorf("stream_share refusals: got %v; want 1", got)
	}
	if !errors.Is(buffer.ErrStreamShare, buffer.ErrFull) {
		t.Error("ErrStreamShare must be a full buffer to the spool")
	}
}

// TestBoundsOfClientDrivenTables: tokens a client invents cannot grow the
// limiter past RATE_LIMIT_MAX_KEYS, nor keys the Idempotency-Key store
// past IDEMPOTENCY_MAX_KEYS.
func TestBoundsOfClientDrivenTables(t *testing.T) {
	lim := limits.New(limits.Options{MaxKeys: 3})
	ts := startServer(t, Options{PassThrough: true, Limiter: lim, TokenLimit: limits.Limit{PerDay: 100}}, buffer.Options{})
	for i := range 3 {
		if res := ts.do(t, "POST", "/v0/events?name=ds", authBearer("p.token"+strconv.Itoa(i)), []byte(`{"a":1}`)); res.status != 202 {
			t.Fatalf("token %d: got %d", i, res.status)
		}
	}
	res := ts.do(t, "POST", "/v0/events?name=ds", authBearer("p.token3"), []byte(`{"a":1}`))
	if res.status != 429 || res.header.Get("Retry-After") != "1" || !strings.Contains(res.body, "RATE_LIMIT_MAX_KEYS") {
		t.Fatalf("a fourth token with three counted today: got %d %s; want 429 naming RATE_LIMIT_MAX_KEYS", res.status, res.body)
	}
	if lim.Len() != 3 {
		t.Fatalf("the limiter tracks %d tokens; want 3", lim.Len())
	}

	keys, err := idempotency.Open(idempotency.Options{MaxKeys: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = keys.Close() })
	ts2 := startServer(t, Options{Idempotency: keys}, buffer.Options{})
	post := func(key string) response {
		return ts2.do(t, "POST", "/v0/events?name=ds", map[string]string{"Idempotency-Key": key}, []byte(`{"a":1}`))
	}
	for _, k := range []string{"k1", "k2", "k3"} {
		if res := post(k); res.status != 202 || res.header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("%s: got %d %v", k, res.status, res.header)
		}
	}
	// k1 was evicted for k3: its repeat is stored again (counted), k3's is not.
	if res := post("k1"); res.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("k1 after its eviction: replayed; want stored again")
	}
	if res := post("k3"); res.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("k3: not replayed")
	}
	if n := ts2.buf.Len(); n != 4 {
		t.Fatalf("stored %d events; want 4 (k1 twice, k2, k3)", n)
	}
}

// TestPassthroughForNamedClients: the rest of the API goes with
// TINYBIRD_TOKEN, which reaches every datasource, so a client with an
// allow-list is not forwarded; one without is, as an AUTHORIZATION_TOKEN is.
func TestPassthroughForNamedClients(t *testing.T) {
	var forwarded atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		forwarded.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"data":[]}`))
	}))
	t.Cleanup(api.Close)
	set := clientSet(t, `{"clients":[
		{"name":"web","token_sha256":"{web}","datasources":["page_views"]},
		{"name":"api","token_sha256":"{api}"}]}`)
	ts := startServer(t, Options{Clients: set, Passthrough: PassthroughOptions{BaseURL: api.URL, Token: "tb-upstream", Timeout: time.Second}}, buffer.Options{})
	res := ts.do(t, "GET", "/v0/pipes/top.json", authBearer(webToken), nil)
	if res.status != 403 || !strings.Contains(res.body, "client 'web' may only send events") || forwarded.Load() != 0 {
		t.Fatalf("a client with an allow-list: got %d %s, %d forwarded; want 403 and nothing forwarded", res.status, res.body, forwarded.Load())
	}
	if res := ts.do(t, "GET", "/v0/pipes/top.json", authBearer(apiToken), nil); res.status != 200 || forwarded.Load() != 1 {
		t.Fatalf("a client without one: got %d %s, %d forwarded; want 200, forwarded", res.status, res.body, forwarded.Load())
	}
}
