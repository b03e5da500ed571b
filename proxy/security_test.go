package proxy

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/logbuf"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// rawRequest writes raw to addr as it is, byte for byte (no client library
// would send most of what these tests send), and reads one response.
func rawRequest(t *testing.T, addr, raw string) response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, header: res.Header, body: string(b)}
}

// victim listens on another loopback address and counts every connection
// it gets: no request through the proxy may ever reach it.
func victim(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no second loopback address: %v", err)
	}
	var hits atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hits.Add(1)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"pwned\":true}")
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), &hits
}

// TestPassthroughNeverLeavesTheConfiguredHost sends request targets that
// name another host, with every method, in both auth modes: none may reach
// the victim listener, and every request upstream gets goes to the
// configured host.
func TestPassthroughNeverLeavesTheConfiguredHost(t *testing.T) {
	victimAddr, hits := victim(t)
	host, port, _ := net.SplitHostPort(victimAddr)
	targets := []string{
		"@" + victimAddr + "/v0/pipes",
		"." + victimAddr + "/x",
		"//" + victimAddr + "/x",
		victimAddr,
		"http://" + victimAddr + "/x",
		"https://" + victimAddr + "/x",
		"*",
		"v0/pipes",
		"@" + host + ":" + port,
	}
	methods := []string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
	for _, mode := range []struct {
		name string
		opts Options
	}{
		{"proxy token", Options{Tokens: []string{clientToken}}},
		{"pass-through", Options{PassThrough: true}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			api, requests := fakeAPI(t)
			opts := mode.opts
			opts.Passthrough = PassthroughOptions{BaseURL: api.URL, Token: "tb-upstream", Timeout: time.Second}
			ts := startServer(t, opts, buffer.Options{})
			addr := strings.TrimPrefix(ts.url, "http://")
			apiHost := strings.TrimPrefix(api.URL, "http://")
			for _, m := range methods {
				for _, target := range targets {
					res := rawRequest(t, addr, m+" "+target+" HTTP/1.1\r\nHost: "+victimAddr+
						"\r\nAuthorization: Bearer "+clientToken+"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
					if !strings.HasPrefix(target, "/") || m == "CONNECT" || m == "TRACE" {
						if res.status != 400 && res.status != 405 {
							t.Errorf("%s %s: got %d; want 400 or 405", m, target, res.status)
						}
						if m != "HEAD" && !strings.HasPrefix(res.body, `{"error":`) {
							t.Errorf("%s %s: body %q is not a JSON error", m, target, res.body)
						}
					}
				}
			}
			if n := hits.Load(); n != 0 {
				t.Fatalf("the victim listener got %d connections through the proxy", n)
			}
			for _, r := range requests() {
				if r.host != apiHost {
					t.Errorf("upstream got %s %s for host %q; want only %q", r.method, r.path, r.host, apiHost)
				}
				if mode.name == "proxy token" && r.auth != "Bearer tb-upstream" {
					t.Errorf("upstream got Authorization %q", r.auth)
				}
			}
		})
	}
}

// TestPassthroughForwardsTheRawQuery: the query reaches upstream byte for
// byte as the client encoded it, less the proxy's own token parameter.
func TestPassthroughForwardsTheRawQuery(t *testing.T) {
	api, requests := fakeAPI(t)
	ts := startServer(t, Options{Tokens: []string{clientToken},
		Passthrough: PassthroughOptions{BaseURL: api.URL, Token: "tb-upstream", Timeout: time.Second}}, buffer.Options{})
	addr := strings.TrimPrefix(ts.url, "http://")
	for _, c := range []struct{ query, want string }{
		{"d=a;e=f&token=" + clientToken, "d=a;e=f"},
		{"q=%zz&tok%65n=" + clientToken + "&x=%2B+1", "q=%zz&x=%2B+1"},
		{"token=" + clientToken, ""},
		{"a=1&b=&c&token=" + clientToken + "&d", "a=1&b=&c&d"},
	} {
		res := rawRequest(t, addr, "GET /v0/sql?"+c.query+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		if res.status != 201 {
			t.Fatalf("GET /v0/sql?%s: got %d %s", c.query, res.status, res.body)
		}
		got := requests()
		if last := got[len(got)-1]; last.query != c.want {
			t.Errorf("client query %q reached upstream as %q; want %q", c.query, last.query, c.want)
		}
	}
}

// TestTokensOfTheWrongShapeAreRefused: a token with a byte no token has, a
// blank one, or one over MaxTokenBytes is refused at the door in every
// mode, for events and the passthrough alike, and never reaches upstream or
// the buffer.
func TestTokensOfTheWrongShapeAreRefused(t *testing.T) {
	long := strings.Repeat("t", 65)
	for _, mode := range []struct {
		name string
		opts Options
	}{
		{"pass-through", Options{PassThrough: true}},
		{"proxy token", Options{Tokens: []string{clientToken}}},
		{"open", Options{}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			api, requests := fakeAPI(t)
			opts := mode.opts
			opts.MaxTokenBytes = 64
			opts.Passthrough = PassthroughOptions{BaseURL: api.URL, Timeout: time.Second}
			ts := startServer(t, opts, buffer.Options{})
			addr := strings.TrimPrefix(ts.url, "http://")
			for _, c := range []struct{ name, query, header string }{
				{"NUL in query", "token=abc%00def", ""},
				{"newline in query", "token=abc%0Adef", ""},
				{"spaces in query", "token=%20%20%20", ""},
				{"space inside", "token=abc%20def", ""},
				{"non-ASCII", "token=%C3%A9t%C3%A9", ""},
				{"DEL", "token=abc%7F", ""},
				{"too long in query", "token=" + long, ""},
				{"too long in header", "", "Authorization: Bearer " + long + "\r\n"},
				{"tab in header", "", "Authorization: Bearer abc\tdef\r\n"},
			} {
				for _, path := range []string{"/v0/events?name=ds&", "/v0/pipes/p.json?"} {
					res := rawRequest(t, addr, "POST "+path+c.query+" HTTP/1.1\r\nHost: x\r\n"+c.header+
						"Content-Length: 8\r\nConnection: close\r\n\r\n{\"a\":1}\n")
					if res.status != 403 || !strings.Contains(res.body, "printable ASCII") {
						t.Errorf("%s, %s: got %d %s; want 403 naming the token's shape", c.name, path, res.status, res.body)
					}
				}
			}
			if got := requests(); len(got) != 0 {
				t.Errorf("upstream got %d requests, first with Authorization %q", len(got), got[0].auth)
			}
			if data, _ := ts.stored(); data != "" {
				t.Errorf("the buffer holds %q", data)
			}
			// A well-formed token of exactly the limit is fine.
			if mode.name != "proxy token" {
				res := ts.do(t, "POST", "/v0/events?name=ds&token="+long[:64], nil, []byte(`{"a":1}`))
				if res.status != 202 {
					t.Errorf("a 64-byte token: got %d %s; want 202", res.status, res.body)
				}
			}
		})
	}
}

// TestBodyReadErrors: a body that cannot be read is not "too large": a
// malformed chunked body gets 400 and a stalled upload 408, each as JSON
// with its own reason, and nothing is stored.
func TestBodyReadErrors(t *testing.T) {
	ts := startServer(t, Options{ReadTimeout: 500 * time.Millisecond}, buffer.Options{})
	addr := strings.TrimPrefix(ts.url, "http://")
	res := rawRequest(t, addr, "POST /v0/events?name=ds HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"8\r\n{\"a\":1}\n\r\nzz\r\nnot a chunk\r\n0\r\n\r\n")
	if res.status != 400 || !strings.Contains(res.body, "could not be read") {
		t.Errorf("malformed chunked body: got %d %s; want 400 saying the body could not be read", res.status, res.body)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /v0/events?name=ds HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat(`{"a":1}`+"\n", 100))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != 408 || !strings.Contains(string(b), "READ_TIMEOUT") {
		t.Errorf("stalled upload: got %d %s; want 408 naming READ_TIMEOUT", r.StatusCode, b)
	}
	if data, _ := ts.stored(); data != "" {
		t.Errorf("stored %q", data)
	}
	for reason, want := range map[string]float64{reasonBadRequest: 1, reasonReadTimeout: 1, reasonTooLarge: 0} {
		if got := testutil.ToFloat64(ts.srv.m.refusedReqs.WithLabelValues(reason)); got != want {
			t.Errorf("refused{reason=%s} = %v; want %v", reason, got, want)
		}
	}
}

// TestNoTokenInLogs sends requests that fail in every way a client can make
// them fail, each carrying a token in its header and its query, with the
// log at debug level: no token appears in any line.
func TestNoTokenInLogs(t *testing.T) {
	const (
		header = "hdr-SECRET-1234567890"
		query  = "qry-SECRET-0987654321"
	)
	var logs logbuf.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	down, _ := net.Listen("tcp", "127.0.0.1:0")
	downURL := "http://" + down.Addr().String()
	down.Close() // nothing listens: the passthrough fails
	ts := startServerLogging(t, Options{PassThrough: true, ReadTimeout: 300 * time.Millisecond, MaxHeaderBytes: 2048,
		Passthrough: PassthroughOptions{BaseURL: downURL, Timeout: time.Second}}, buffer.Options{}, log)
	addr := strings.TrimPrefix(ts.url, "http://")
	auth := "Connection: close\r\nAuthorization: Bearer " + header + "\r\n"
	for _, raw := range []string{
		"POST /v0/events?name=ds&token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 3\r\n\r\n{x}",
		"POST /v0/events?name=9bad&token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 2\r\n\r\n{}",
		"POST /v0/events?name=ds&token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "Transfer-Encoding: chunked\r\n\r\nzz\r\n",
		"POST /v0/events?name=ds&token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
		"POST /v0/events?name=ds&token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "X-Pad: " + strings.Repeat("p", 4000) + "\r\n\r\n",
		"GET /v0/pipes/p.json?token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n",
		"GET /v0/pipes/p.json?token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "Bad Header Line\r\n\r\n",
		"GET http://other/x?token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n",
		"POST /v0/events?name=ds&token=" + query + " HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 100\r\n\r\n{}", // stalls
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, raw)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.ReadAll(c) // until the server closes (or the read times out)
		c.Close()
	}
	// A slowloris: headers that never end.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /v0/events?name=ds&token="+query+" HTTP/1.1\r\nHost: x\r\n"+auth)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadAll(c)
	c.Close()
	out := logs.String()
	if !strings.Contains(out, "DEBUG") {
		t.Fatalf("no debug lines were logged: %q", out)
	}
	for _, secret := range []string{header, query} {
		if strings.Contains(out, secret) {
			t.Errorf("a token reached the log:\n%s", out)
		}
	}
}

// TestMaxConnectionsAnswersJSON: a connection over MaxConnections gets a
// JSON 503 with Retry-After, and once one closes a new one is served.
func TestMaxConnectionsAnswersJSON(t *testing.T) {
	ts := startServer(t, Options{MaxConnections: 2}, buffer.Options{})
	addr := strings.TrimPrefix(ts.url, "http://")
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n") // keep-alive: stays open
		if res, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || res.StatusCode != 200 {
			t.Fatalf("held connection: %v %v", res, err)
		}
		held = append(held, c)
	}
	res := rawRequest(t, addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	if res.status != 503 || res.header.Get("Retry-After") != "1" || res.header.Get("Content-Type") != "application/json" ||
		!strings.Contains(res.body, "MAX_CONNECTIONS") {
		t.Fatalf("over the cap: got %d %v %s; want a JSON 503 with Retry-After naming MAX_CONNECTIONS", res.status, res.header, res.body)
	}
	if got := testutil.ToFloat64(ts.srv.m.refusedReqs.WithLabelValues(reasonMaxConns)); got != 1 {
		t.Errorf("refused{reason=max_connections} = %v; want 1", got)
	}
	held[0].Close()
	poll.Until(t, "a connection to be served again", func() bool {
		return rawRequest(t, addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status == 200
	})
}

// TestPassthroughQueryTokenShapeWithOtherAuth: a ?token= with bytes no token
// has is refused even when the request uses another Authorization scheme.
func TestPassthroughQueryTokenShapeWithOtherAuth(t *testing.T) {
	api, requests := fakeAPI(t)
	ts := startServer(t, Options{PassThrough: true, Passthrough: PassthroughOptions{BaseURL: api.URL, Timeout: time.Second}}, buffer.Options{})
	res := ts.do(t, "GET", "/v0/pipes/p.json?token=abc%00def", map[string]string{"Authorization": "Basic dXNlcjpwdw=="}, nil)
	if res.status != 403 || len(requests()) != 0 {
		t.Errorf("got %d with %d upstream requests; want 403 and none", res.status, len(requests()))
	}
}
