package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// seen is what the fake Tinybird API saw of one forwarded request.
type seen struct {
	method, host, path, query, auth string
	header                          http.Header
	bodyLen                         int
	bodySum                         [32]byte
}

// fakeAPI stands in for Tinybird's non-ingest API: it records each request
// and answers a pipe query with a large streamed body and rate-limit headers.
func fakeAPI(t *testing.T) (*httptest.Server, func() []seen) {
	t.Helper()
	var mu sync.Mutex
	var log []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		mu.Lock()
		log = append(log, seen{r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), r.Header.Clone(), int(n), sum})
		mu.Unlock()
		switch {
		case r.URL.Path == "/v0/pipes/top.json":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-RateLimit-Limit", "100")
			w.Header().Set("X-RateLimit-Remaining", "99")
			w.Header().Set("Access-Control-Allow-Origin", "https://upstream.example") // must not reach the client twice
			w.WriteHeader(200)
			for i := range 50_000 { // ~1.5 MB, written in pieces: streamed, not buffered
				io.WriteString(w, `{"row":`+strings.Repeat("7", 20)+`}`+"\n")
				if i%10_000 == 0 {
					w.(http.Flusher).Flush()
				}
			}
		case r.URL.Path == "/v0/slow":
			time.Sleep(2 * time.Second)
		case r.URL.Path == "/v0/limited":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(429)
			io.WriteString(w, `{"error":"rate limited"}`)
		default:
			w.WriteHeader(201)
			io.WriteString(w, `{"ok":true}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() []seen { mu.Lock(); defer mu.Unlock(); return append([]seen(nil), log...) }
}

func TestPassthrough(t *testing.T) {
	api, requests := fakeAPI(t)
	ts := startServer(t, Options{
		Tokens:       []string{clientToken},
		MaxBodyBytes: 1 << 20,
		Passthrough:  PassthroughOptions{BaseURL: api.URL, Token: "tb-upstream", Timeout: time.Second},
	}, buffer.Options{})

	t.Run("GET pipe, streamed, headers preserved, token swapped", func(t *testing.T) {
		res := ts.do(t, "GET", "/v0/pipes/top.json?limit=5&token="+clientToken, map[string]string{"Origin": "https://app.example"}, nil)
		if res.status != 200 || strings.Count(res.body, "\n") != 50_000 {
			t.Fatalf("got %d with %d lines; want 200 and all 50000", res.status, strings.Count(res.body, "\n"))
		}
		if res.header.Get("X-RateLimit-Remaining") != "99" || res.header.Get("Content-Type") != "application/json" {
			t.Errorf("upstream headers lost: %v", res.header)
		}
		if got := res.header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != "*" {
			t.Errorf("Access-Control-Allow-Origin: got %q; want only the proxy's *", got)
		}
		r := requests()[len(requests())-1]
		if r.query != "limit=5" || r.auth != "Bearer tb-upstream" {
			t.Errorf("upstream saw query %q auth %q; want the client token replaced by the proxy's", r.query, r.auth)
		}
	})
	t.Run("POST body and status preserved", func(t *testing.T) {
		res := ts.do(t, "POST", "/v0/sql", map[string]string{"Authorization": bearer, "Content-Type": "text/plain"}, []byte("SELECT 1"))
		if res.status != 201 || res.body != `{"ok":true}` {
			t.Errorf("got %d %s; want upstream's 201 and body", res.status, res.body)
		}
		r := requests()[len(requests())-1]
		if r.method != "POST" || r.path != "/v0/sql" || r.bodyLen != 8 || r.header.Get("Content-Type") != "text/plain" {
			t.Errorf("upstream saw %+v", r)
		}
	})
	t.Run("upload larger than MAX_BODY_BYTES streams through", func(t *testing.T) {
		big := bytes.Repeat([]byte("a,b,c\n"), 1_000_000) // 6 MB > 1 MiB
		res := ts.do(t, "POST", "/v0/datasources?name=x&mode=append&format=csv", map[string]string{"Authorization": bearer}, big)
		if res.status != 201 {
			t.Fatalf("got %d %s; want 201", res.status, res.body)
		}
		r := requests()[len(requests())-1]
		if r.bodyLen != len(big) || r.bodySum != sha256.Sum256(big) {
			t.Errorf("upstream got %d bytes; want all %d, intact", r.bodyLen, len(big))
		}
	})
	t.Run("429 and Retry-After come back", func(t *testing.T) {
		res := ts.do(t, "GET", "/v0/limited", map[string]string{"Authorization": bearer}, nil)
		if res.status != 429 || res.header.Get("Retry-After") != "7" {
			t.Errorf("got %d Retry-After %q; want 429 and 7", res.status, res.header.Get("Retry-After"))
		}
	})
	t.Run("wrong proxy token", func(t *testing.T) {
		n := len(requests())
		res := ts.do(t, "GET", "/v0/pipes/top.json", map[string]string{"Authorization": "Bearer nope"}, nil)
		if res.status != 403 || len(requests()) != n {
			t.Errorf("got %d and %d forwarded; want 403 and nothing forwarded", res.status, len(requests())-n)
		}
	})
	t.Run("upstream too slow", func(t *testing.T) {
		res := ts.do(t, "GET", "/v0/slow", map[string]string{"Authorization": bearer}, nil)
		if res.status != 504 || res.body != string(bodyUpstreamTimeout) {
			t.Errorf("got %d %s; want a JSON 504", res.status, res.body)
		}
	})
}

// TestPassthroughStreamsResponses: the client reads the first part of a
// response while upstream has not yet sent the rest, which a proxy that
// buffers whole bodies cannot do.
func TestPassthroughStreamsResponses(t *testing.T) {
	release := make(chan struct{})
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(w, "second\n")
	}))
	defer api.Close()
	defer close(release)
	ts := startServer(t, Options{PassThrough: true, Passthrough: PassthroughOptions{BaseURL: api.URL}}, buffer.Options{})
	resp, err := http.Get(ts.url + "/v0/pipes/live.json?token=t")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 6)
		_, err := io.ReadFull(resp.Body, b)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	}()
	select {
	case s := <-got:
		if s != "first\n" {
			t.Fatalf("got %q; want the first part", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first part did not arrive before upstream finished: the response is buffered")
	}
}

func TestPassthroughPassesClientToken(t *testing.T) {
	api, requests := fakeAPI(t)
	ts := startServer(t, Options{PassThrough: true, Passthrough: PassthroughOptions{BaseURL: api.URL}}, buffer.Options{})
	ts.do(t, "GET", "/v0/pipes/x.json?token=client-own&q=1", nil, nil)
	if r := requests()[0]; r.query != "token=client-own&q=1" {
		t.Errorf("upstream saw query %q; want the client's token untouched", r.query)
	}
	// A read with the token in the header, as SDKs send it.
	ts.do(t, "GET", "/v0/pipes/x.json?q=2", map[string]string{"Authorization": "Bearer client-own"}, nil)
	if r := requests()[1]; r.auth != "Bearer client-own" {
		t.Errorf("upstream saw Authorization %q; want the client's own", r.auth)
	}
}

// TestEveryConfiguredTokenWorks: each of AUTHORIZATION_TOKEN's tokens is
// accepted, wherever it stands in the list, for events and the passthrough.
func TestEveryConfiguredTokenWorks(t *testing.T) {
	api, _ := fakeAPI(t)
	tokens := []string{"first-token", "middle-token", "last-token"}
	ts := startServer(t, Options{Tokens: tokens, Passthrough: PassthroughOptions{BaseURL: api.URL, Token: "up"}}, buffer.Options{})
	for _, tok := range tokens {
		if res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Authorization": "Bearer " + tok}, []byte(`{}`)); res.status != 202 {
			t.Errorf("events with %s: got %d; want 202", tok, res.status)
		}
		if res := ts.do(t, "GET", "/v0/pipes/x.json?token="+tok, nil, nil); res.status != 201 {
			t.Errorf("passthrough with %s: got %d; want 201", tok, res.status)
		}
	}
	if res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Authorization": "Bearer first-tokenX"}, []byte(`{}`)); res.status != 403 {
		t.Errorf("a token not configured: got %d; want 403", res.status)
	}
}

func TestPassthroughUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ts := startServer(t, Options{PassThrough: true, Passthrough: PassthroughOptions{BaseURL: "http://" + addr}}, buffer.Options{})
	res := ts.do(t, "GET", "/v0/pipes/x.json", map[string]string{"Authorization": "Bearer t"}, nil)
	if res.status != 502 || res.body != string(bodyUpstreamDown) {
		t.Errorf("got %d %s; want a JSON 502", res.status, res.body)
	}
}

func TestPassthroughOff(t *testing.T) {
	ts := startServer(t, Options{PassThrough: true}, buffer.Options{})
	if res := ts.do(t, "GET", "/v0/pipes/x.json", map[string]string{"Authorization": "Bearer t"}, nil); res.status != 404 || res.body != `{"error":"not found"}` {
		t.Errorf("got %d %s; want a JSON 404", res.status, res.body)
	}
}

func TestCORS(t *testing.T) {
	ts := startServer(t, Options{Tokens: []string{clientToken}}, buffer.Options{})
	pre := ts.do(t, "OPTIONS", "/v0/events?name=ds", map[string]string{
		"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
		"Access-Control-Request-Headers": "content-type",
	}, nil)
	if pre.status != 204 || pre.header.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(pre.header.Get("Access-Control-Allow-Methods"), "POST") ||
		pre.header.Get("Access-Control-Allow-Headers") != "content-type" {
		t.Errorf("preflight: got %d %v", pre.status, pre.header)
	}
	// A preflight that names no headers is told the ones the Events API uses.
	bare := ts.do(t, "OPTIONS", "/v0/events?name=ds", map[string]string{"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}, nil)
	if got := bare.header.Get("Access-Control-Allow-Headers"); got != "Authorization, Content-Type, Content-Encoding" {
		t.Errorf("preflight without Access-Control-Request-Headers: Allow-Headers %q; want Authorization, Content-Type, Content-Encoding", got)
	}
	for _, tok := range []string{clientToken, "wrong"} {
		res := ts.do(t, "POST", "/v0/events?name=ds&token="+tok, map[string]string{"Origin": "https://shop.example", "Content-Type": "application/json"}, []byte(`{"a":1}`))
		if res.header.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("POST answered %d without Access-Control-Allow-Origin", res.status)
		}
	}

	only := startServer(t, Options{CORSOrigins: []string{"https://shop.example"}}, buffer.Options{})
	res := only.do(t, "POST", "/v0/events?name=ds", map[string]string{"Origin": "https://shop.example"}, []byte(`{"a":1}`))
	if res.header.Get("Access-Control-Allow-Origin") != "https://shop.example" || res.header.Get("Vary") != "Origin" {
		t.Errorf("listed origin: got %v", res.header)
	}
	res = only.do(t, "OPTIONS", "/v0/events?name=ds", map[string]string{"Origin": "https://evil.example"}, nil)
	if res.status != 403 || res.header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("unlisted origin preflight: got %d %v; want 403 without Allow-Origin", res.status, res.header)
	}
}

// TestMaxDatasources: MAX_DATASOURCES caps the names held at once. Names
// of requests that store nothing never count, a third name waits (429) while
// two are held, and once one is delivered the third gets in: no lockout.
func TestMaxDatasources(t *testing.T) {
	ts := startServer(t, Options{MaxDatasources: 2}, buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20, MaxDatasources: 2})
	for i := range 50 { // empty bodies with junk names hold nothing
		if res := ts.do(t, "POST", fmt.Sprintf("/v0/events?name=junk%d", i), nil, nil); res.status != 202 {
			t.Fatalf("empty body: got %d; want 202", res.status)
		}
	}
	for _, ds := range []string{"a", "b", "a", "b"} {
		if res := ts.do(t, "POST", "/v0/events?name="+ds, nil, []byte(`{}`)); res.status != 202 {
			t.Fatalf("%s: got %d; want 202", ds, res.status)
		}
	}
	res := ts.do(t, "POST", "/v0/events?name=c", nil, []byte(`{}`))
	if res.status != 429 || res.header.Get("Retry-After") != "1" || !strings.Contains(res.body, "MAX_DATASOURCES") {
		t.Errorf("third datasource: got %d %v %s; want 429 with Retry-After naming MAX_DATASOURCES", res.status, res.header, res.body)
	}
	for _, e := range ts.buf.Take(nil) { // the flusher delivers a's events
		if e.Key.Datasource == "a" {
			ts.buf.Release(e.Key, e.Rows, e.Data)
		}
	}
	if res := ts.do(t, "POST", "/v0/events?name=c", nil, []byte(`{}`)); res.status != 202 {
		t.Errorf("third datasource once a was delivered: got %d %s; want 202", res.status, res.body)
	}
}

// TestMaxUnverifiedTokens: in pass-through mode, tokens upstream has not
// accepted count against MAX_UNVERIFIED_TOKENS while held; one upstream
// accepted is exempt, and a held token's own later requests always pass.
func TestMaxUnverifiedTokens(t *testing.T) {
	ts := startServer(t, Options{PassThrough: true}, buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20, MaxUnverifiedTokens: 2})
	post := func(token string) response {
		return ts.do(t, "POST", "/v0/events?name=ds&token="+token, nil, []byte(`{}`))
	}
	for _, tok := range []string{"t1", "t2", "t1"} {
		if res := post(tok); res.status != 202 {
			t.Fatalf("%s: got %d %s; want 202", tok, res.status, res.body)
		}
	}
	if res := post("t3"); res.status != 429 || res.header.Get("Retry-After") != "1" || !strings.Contains(res.body, "MAX_UNVERIFIED_TOKENS") {
		t.Fatalf("third unverified token: got %d %s; want 429 naming MAX_UNVERIFIED_TOKENS", res.status, res.body)
	}
	ts.buf.Verify("t1") // upstream accepted a batch of t1's
	if res := post("t3"); res.status != 202 {
		t.Fatalf("t3 once t1 is verified: got %d %s; want 202", res.status, res.body)
	}
	if res := post("t4"); res.status != 429 {
		t.Fatalf("t4 with t2 and t3 unverified: got %d; want 429", res.status)
	}
	// Delivered and forgotten, t1 stays verified: it passes even at the cap.
	for _, e := range ts.buf.Take(nil) {
		if e.Key.Token == "t1" {
			ts.buf.Release(e.Key, e.Rows, e.Data)
		}
	}
	if res := post("t1"); res.status != 202 {
		t.Errorf("verified t1 at the cap: got %d %s; want 202", res.status, res.body)
	}
}

func TestReadyFollowsUpstream(t *testing.T) {
	var healthy bool
	var mu sync.Mutex
	ts := startServer(t, Options{UpstreamHealthy: func() bool { mu.Lock(); defer mu.Unlock(); return healthy }}, buffer.Options{})
	if res := ts.do(t, "GET", "/ready", nil, nil); res.status != 503 || res.body != `{"status":"upstream failing"}` {
		t.Errorf("failing upstream: got %d %s; want 503", res.status, res.body)
	}
	mu.Lock()
	healthy = true
	mu.Unlock()
	if res := ts.do(t, "GET", "/ready", nil, nil); res.status != 200 {
		t.Errorf("healthy upstream: got %d; want 200", res.status)
	}
}

func TestRequestID(t *testing.T) {
	ts := startServer(t, Options{}, buffer.Options{})
	a := ts.do(t, "POST", "/v0/events", nil, nil)
	b := ts.do(t, "POST", "/v0/events", nil, nil)
	if a.header.Get("X-Request-Id") == "" || a.header.Get("X-Request-Id") == b.header.Get("X-Request-Id") {
		t.Errorf("request ids %q and %q; want distinct ids", a.header.Get("X-Request-Id"), b.header.Get("X-Request-Id"))
	}
	if c := ts.do(t, "GET", "/health", map[string]string{"X-Request-Id": "trace-123"}, nil); c.header.Get("X-Request-Id") != "trace-123" {
		t.Errorf("client's id not echoed: %q", c.header.Get("X-Request-Id"))
	}
}

func TestHeaderLimit(t *testing.T) {
	ts := startServer(t, Options{MaxHeaderBytes: 1024}, buffer.Options{})
	res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"X-Padding": strings.Repeat("x", 4096)}, []byte(`{}`))
	if res.status != 431 || res.body != `{"error":"request headers too large (MAX_HEADER_BYTES)"}` {
		t.Errorf("got %d %s; want a JSON 431", res.status, res.body)
	}
	if res := ts.do(t, "POST", "/v0/events?name=ds", nil, []byte(`{}`)); res.status != 202 {
		t.Errorf("normal request after: got %d; want 202", res.status)
	}
}

// TestPassthroughKeepsEncodedPath: the path goes upstream as the client
// encoded it.
func TestPassthroughKeepsEncodedPath(t *testing.T) {
	api, requests := fakeAPI(t)
	_ = requests
	var raw string
	var mu sync.Mutex
	api.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		raw = r.RequestURI
		mu.Unlock()
	})
	ts := startServer(t, Options{PassThrough: true, Passthrough: PassthroughOptions{BaseURL: api.URL}}, buffer.Options{})
	ts.do(t, "GET", "/v0/pipes/a%3Fx=1%20b.json?token=t&q=%C3%BC", nil, nil)
	mu.Lock()
	defer mu.Unlock()
	if raw != "/v0/pipes/a%3Fx=1%20b.json?token=t&q=%C3%BC" {
		t.Errorf("upstream saw %q; want the path and query as sent", raw)
	}
}

// TestPassthroughLongStream: a response that keeps streaming for longer than
// the timeout is relayed whole; only silence counts against it.
func TestPassthroughLongStream(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 15 {
			io.WriteString(w, `{"row":`+strconv.Itoa(i)+"}\n")
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	defer api.Close()
	ts := startServer(t, Options{PassThrough: true, Passthrough: PassthroughOptions{BaseURL: api.URL, Timeout: 500 * time.Millisecond}}, buffer.Options{})
	res := ts.do(t, "GET", "/v0/pipes/long.json?token=t", nil, nil)
	if res.status != 200 || strings.Count(res.body, "\n") != 15 {
		t.Errorf("got %d with %d rows; want all 15 rows of a 1.5s stream through a 0.5s idle timeout", res.status, strings.Count(res.body, "\n"))
	}
}

// TestPassthroughReadOnlyWhenOpen: an open proxy forwards reads only.
func TestPassthroughReadOnlyWhenOpen(t *testing.T) {
	api, requests := fakeAPI(t)
	ts := startServer(t, Options{Passthrough: PassthroughOptions{BaseURL: api.URL, ReadOnly: true}}, buffer.Options{})
	if res := ts.do(t, "POST", "/v0/datasources/x/truncate", nil, nil); res.status != 403 || len(requests()) != 0 {
		t.Errorf("POST: got %d, %d forwarded; want 403 and nothing forwarded", res.status, len(requests()))
	}
	if res := ts.do(t, "GET", "/v0/pipes/top.json", nil, nil); res.status != 200 {
		t.Errorf("GET: got %d; want 200", res.status)
	}
}

// TestPassthroughConnectionHeaders: headers named in Connection are
// hop-by-hop too and are not forwarded.
func TestPassthroughConnectionHeaders(t *testing.T) {
	api, requests := fakeAPI(t)
	ts := startServer(t, Options{PassThrough: true, Passthrough: PassthroughOptions{BaseURL: api.URL}}, buffer.Options{})
	ts.do(t, "GET", "/v0/x?token=t", map[string]string{"Connection": "X-Conn-Only", "X-Conn-Only": "secret", "X-Kept": "1"}, nil)
	r := requests()[0]
	if r.header.Get("X-Conn-Only") != "" || r.header.Get("X-Kept") != "1" {
		t.Errorf("upstream headers: %v; want X-Conn-Only dropped and X-Kept kept", r.header)
	}
}

// TestReadyIgnoresBufferFillWithQueue: with a shared queue the buffer's fill
// does not make the replica unready.
func TestReadyIgnoresBufferFillWithQueue(t *testing.T) {
	ts := startServer(t, Options{HighWatermark: 0.5, IgnoreBufferFill: true}, buffer.Options{MaxEvents: 2, MaxBytes: 1 << 20})
	ts.do(t, "POST", "/v0/events?name=ds", nil, []byte("{}\n{}"))
	if res := ts.do(t, "GET", "/ready", nil, nil); res.status != 200 {
		t.Errorf("full buffer, IgnoreBufferFill: got %d %s; want 200", res.status, res.body)
	}
}
