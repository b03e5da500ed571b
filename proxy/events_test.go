package proxy

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
)

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func zstded(t testing.TB, b []byte) []byte {
	t.Helper()
	w, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return w.EncodeAll(b, nil)
}

const (
	clientToken = "client-secret-token"
	bearer      = "Bearer " + clientToken
)

// TestEventsContract walks the Events API contract: status, headers and JSON
// body for each kind of request, and what ends up in the buffer.
func TestEventsContract(t *testing.T) {
	proxyMode := Options{Tokens: []string{"other", clientToken}}
	passThrough := Options{PassThrough: true}
	auth := map[string]string{"Authorization": bearer}
	tests := []struct {
		name       string
		opts       Options
		method     string
		path       string
		header     map[string]string
		body       []byte
		wantStatus int
		wantBody   string // exact JSON
		wantStored string // exact NDJSON in the buffer
		wantToken  string // key token of stored entries
	}{
		{
			name: "single object, no newline", opts: proxyMode, path: "/v0/events?name=ds", header: auth,
			body: []byte(`{"a":1}`), wantStatus: 202,
			wantBody: `{"successful_rows":1,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n",
		},
		{
			name: "ndjson, crlf, blank lines", opts: proxyMode, path: "/v0/events?name=ds", header: auth,
			body: []byte("\r\n{\"a\":1}\r\n\n  \n{\"b\":2}"), wantStatus: 202,
			wantBody: `{"successful_rows":2,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n{\"b\":2}\n",
		},
		{
			name: "gzip", opts: proxyMode, path: "/v0/events?name=ds",
			header: map[string]string{"Authorization": bearer, "Content-Encoding": "gzip"},
			body:   gzipped(t, []byte("{\"a\":1}\n{\"b\":2}\n")), wantStatus: 202,
			wantBody: `{"successful_rows":2,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n{\"b\":2}\n",
		},
		{
			name: "zstd", opts: proxyMode, path: "/v0/events?name=ds",
			header: map[string]string{"Authorization": bearer, "Content-Encoding": "zstd"},
			body:   zstded(t, []byte("{\"a\":1}\n{\"b\":2}\n")), wantStatus: 202,
			wantBody: `{"successful_rows":2,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n{\"b\":2}\n",
		},
		{
			name: "content-type ignored, unknown params accepted", opts: proxyMode,
			path:   "/v0/events?name=ds&format=ndjson&mode=append&from=ts-sdk&cli_version=5&__tb__semver=1",
			header: map[string]string{"Authorization": bearer, "Content-Type": "application/x-www-form-urlencoded"},
			body:   []byte(`{"a":1}`), wantStatus: 202,
			wantBody: `{"successful_rows":1,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n",
		},
		{
			name: "token in query", opts: proxyMode, path: "/v0/events?name=ds&token=" + clientToken,
			body: []byte(`{"a":1}`), wantStatus: 202,
			wantBody: `{"successful_rows":1,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n",
		},
		{
			name: "lower-case bearer", opts: proxyMode, path: "/v0/events?name=ds",
			header: map[string]string{"Authorization": "bearer " + clientToken},
			body:   []byte(`{"a":1}`), wantStatus: 202,
			wantBody: `{"successful_rows":1,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n",
		},
		{
			name: "empty body stores nothing", opts: proxyMode, path: "/v0/events?name=ds", header: auth,
			body: []byte("\n\n"), wantStatus: 202, wantBody: `{"successful_rows":0,"quarantined_rows":0}`,
		},
		{
			name: "pass-through keys by client token", opts: passThrough, path: "/v0/events?name=ds", header: auth,
			body: []byte(`{"a":1}`), wantStatus: 202,
			wantBody: `{"successful_rows":1,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n", wantToken: clientToken,
		},
		{
			name: "pass-through without token", opts: passThrough, path: "/v0/events?name=ds",
			body: []byte(`{"a":1}`), wantStatus: 403,
			wantBody: `{"error":"missing token: send 'Authorization: Bearer <token>' or ?token=<token>"}`,
		},
		{
			name: "proxy mode, wrong token", opts: proxyMode, path: "/v0/events?name=ds",
			header: map[string]string{"Authorization": "Bearer nope"}, body: []byte(`{"a":1}`),
			wantStatus: 403, wantBody: `{"error":"invalid token"}`,
		},
		{
			name: "proxy mode, token prefix is not enough", opts: proxyMode, path: "/v0/events?name=ds&token=client-secret",
			body: []byte(`{"a":1}`), wantStatus: 403, wantBody: `{"error":"invalid token"}`,
		},
		{
			name: "proxy mode, no token", opts: proxyMode, path: "/v0/events?name=ds",
			body: []byte(`{"a":1}`), wantStatus: 403,
			wantBody: `{"error":"missing token: send 'Authorization: Bearer <token>' or ?token=<token>"}`,
		},
		{
			name: "open proxy accepts anyone", opts: Options{}, path: "/v0/events?name=ds",
			body: []byte(`{"a":1}`), wantStatus: 202,
			wantBody: `{"successful_rows":1,"quarantined_rows":0}`, wantStored: "{\"a\":1}\n",
		},
		{
			name: "missing name", opts: proxyMode, path: "/v0/events", header: auth, body: []byte(`{"a":1}`),
			wantStatus: 400, wantBody: `{"error":"missing the 'name' parameter: POST /v0/events?name=<datasource>"}`,
		},
		{
			name: "name starting with a digit", opts: proxyMode, path: "/v0/events?name=1ds", header: auth, body: []byte(`{"a":1}`),
			wantStatus: 400, wantBody: string(bodyBadName),
		},
		{
			name: "name with a dash", opts: proxyMode, path: "/v0/events?name=my-ds", header: auth, body: []byte(`{"a":1}`),
			wantStatus: 400, wantBody: string(bodyBadName),
		},
		{
			name: "invalid line refuses the whole request", opts: proxyMode, path: "/v0/events?name=ds", header: auth,
			body: []byte("{\"a\":1}\n{\"a\":\n"), wantStatus: 400,
			wantBody: `{"error":"line 2: invalid JSON; no rows from this request were accepted"}`,
		},
		{
			name: "unsupported encoding", opts: proxyMode, path: "/v0/events?name=ds",
			header: map[string]string{"Authorization": bearer, "Content-Encoding": "br"}, body: []byte(`{"a":1}`),
			wantStatus: 415, wantBody: `{"error":"unsupported Content-Encoding: use gzip, zstd or none"}`,
		},
		{
			name: "corrupt gzip", opts: proxyMode, path: "/v0/events?name=ds",
			header: map[string]string{"Authorization": bearer, "Content-Encoding": "gzip"}, body: []byte(`{"a":1}`),
			wantStatus: 400, wantBody: `{"error":"the request body could not be decompressed"}`,
		},
		{
			name: "body over the limit", opts: Options{Tokens: []string{clientToken}, MaxBodyBytes: 64}, path: "/v0/events?name=ds",
			header: auth, body: []byte(`{"a":"` + strings.Repeat("x", 100) + `"}`), wantStatus: 413,
			wantBody: `{"error":"request body larger than 64 bytes (after decompression); split it into smaller requests"}`,
		},
		{
			name: "body at the limit", opts: Options{Tokens: []string{clientToken}, MaxBodyBytes: 64}, path: "/v0/events?name=ds",
			header: auth, body: []byte(`{"a":"` + strings.Repeat("x", 56) + `"}`), wantStatus: 202,
			wantBody: `{"successful_rows":1,"quarantined_rows":0}`, wantStored: `{"a":"` + strings.Repeat("x", 56) + "\"}\n",
		},
		{
			name: "gzip body decoding to the limit", opts: Options{Tokens: []string{clientToken}, MaxBodyBytes: 200}, path: "/v0/events?name=ds",
			header: map[string]string{"Authorization": bearer, "Content-Encoding": "gzip"},
			body:   gzipped(t, []byte(`{"a":"`+strings.Repeat("x", 192)+`"}`)), wantStatus: 202,
			wantBody: `{"successful_rows":1,"quarantined_rows":0}`, wantStored: `{"a":"` + strings.Repeat("x", 192) + "\"}\n",
		},
		{
			name: "gzip bomb", opts: Options{Tokens: []string{clientToken}, MaxBodyBytes: 1 << 16}, path: "/v0/events?name=ds",
			header: map[string]string{"Authorization": bearer, "Content-Encoding": "gzip"},
			body:   gzipped(t, []byte(`{"a":"`+strings.Repeat("x", 10<<20)+`"}`)), wantStatus: 413,
			wantBody: `{"error":"request body larger than 65536 bytes (after decompression); split it into smaller requests"}`,
		},
		{
			name: "wrong method", opts: proxyMode, method: "GET", path: "/v0/events?name=ds", header: auth,
			wantStatus: 405, wantBody: `{"error":"method not allowed"}`,
		},
		{
			name: "unknown path", opts: proxyMode, method: "POST", path: "/v0/nope", header: auth,
			wantStatus: 404, wantBody: `{"error":"not found"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := startServer(t, tt.opts, buffer.Options{})
			method := tt.method
			if method == "" {
				method = "POST"
			}
			res := ts.do(t, method, tt.path, tt.header, tt.body)
			if res.status != tt.wantStatus {
				t.Errorf("status: got %d; want %d (body %s)", res.status, tt.wantStatus, res.body)
			}
			if res.body != tt.wantBody {
				t.Errorf("body: got %s; want %s", res.body, tt.wantBody)
			}
			if ct := res.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type: got %q; want application/json", ct)
			}
			if !json.Valid([]byte(res.body)) {
				t.Errorf("body is not JSON: %s", res.body)
			}
			if strings.Contains(res.body, clientToken) {
				t.Errorf("body echoes the token: %s", res.body)
			}
			stored, keys := ts.stored()
			if stored != tt.wantStored {
				t.Errorf("stored: got %q; want %q", stored, tt.wantStored)
			}
			for _, k := range keys {
				if k.Token != tt.wantToken || k.Datasource != "ds" {
					t.Errorf("key: got %+v; want token %q, datasource ds", k, tt.wantToken)
				}
			}
		})
	}
}

func TestBufferFullRefusesWhole(t *testing.T) {
	ts := startServer(t, Options{}, buffer.Options{MaxEvents: 3, MaxBytes: 1 << 20})
	if res := ts.do(t, "POST", "/v0/events?name=ds", nil, []byte("{}\n{}")); res.status != 202 {
		t.Fatalf("first request: got %d; want 202", res.status)
	}
	res := ts.do(t, "POST", "/v0/events?name=ds", nil, []byte("{\"a\":1}\n{\"b\":2}"))
	if res.status != 429 {
		t.Fatalf("got %d; want 429", res.status)
	}
	for h, want := range map[string]string{
		"Retry-After": "1", "X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1",
	} {
		if got := res.header.Get(h); got != want {
			t.Errorf("%s: got %q; want %q", h, got, want)
		}
	}
	if want := `{"error":"the proxy's buffer is full; retry after the time in Retry-After"}`; res.body != want {
		t.Errorf("body: got %s; want %s", res.body, want)
	}
	if stored, _ := ts.stored(); stored != "{}\n{}\n" {
		t.Errorf("stored: got %q; want only the first request", stored)
	}
	if got := testutil.ToFloat64(ts.srv.m.refusedEvents.WithLabelValues(reasonBufferFull)); got != 2 {
		t.Errorf("tbproxy_events_refused_total{reason=buffer_full}: got %v; want 2", got)
	}

	// A request larger than the whole buffer can never fit: 413, not 429.
	res = ts.do(t, "POST", "/v0/events?name=ds", nil, []byte("{}\n{}\n{}\n{}"))
	if res.status != 413 {
		t.Errorf("oversized request: got %d; want 413", res.status)
	}
	// Far more lines than the buffer holds: refused before splitting. Had it
	// been split, the buffer's ErrTooLarge would give the same 413 but count
	// the 100,000 events it had cut out.
	before := testutil.ToFloat64(ts.srv.m.refusedEvents.WithLabelValues(reasonTooLarge))
	res = ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "gzip"},
		gzipped(t, bytes.Repeat([]byte("{}\n"), 100_000)))
	if res.status != 413 || !strings.Contains(res.body, "more events") {
		t.Errorf("100k-line request: got %d %s; want 413", res.status, res.body)
	}
	if got := testutil.ToFloat64(ts.srv.m.refusedEvents.WithLabelValues(reasonTooLarge)) - before; got != 0 {
		t.Errorf("100k-line request: %v events counted as split and refused; want it refused before splitting", got)
	}
}

func TestClosedBufferAnswers503(t *testing.T) {
	ts := startServer(t, Options{}, buffer.Options{})
	ts.buf.Close()
	res := ts.do(t, "POST", "/v0/events?name=ds", nil, []byte(`{"a":1}`))
	if res.status != 503 || res.body != `{"error":"the proxy is shutting down; retry against another instance"}` {
		t.Fatalf("got %d %s; want 503 and a JSON error", res.status, res.body)
	}
}

func TestHealthAndReady(t *testing.T) {
	ts := startServer(t, Options{HighWatermark: 0.5}, buffer.Options{MaxEvents: 4, MaxBytes: 1 << 20})
	for _, p := range []string{"/health", "/v1/liveness"} {
		if res := ts.do(t, "GET", p, nil, nil); res.status != 200 || res.body != `{"status":"ok"}` {
			t.Errorf("%s: got %d %s; want 200", p, res.status, res.body)
		}
	}
	if res := ts.do(t, "GET", "/ready", nil, nil); res.status != 200 {
		t.Errorf("/ready when empty: got %d %s; want 200", res.status, res.body)
	}
	ts.do(t, "POST", "/v0/events?name=ds", nil, []byte("{}\n{}"))
	if res := ts.do(t, "GET", "/ready", nil, nil); res.status != 503 || !strings.Contains(res.body, "high-water") {
		t.Errorf("/ready at the high-water mark: got %d %s; want 503", res.status, res.body)
	}
	for _, e := range ts.buf.Take(nil) {
		ts.buf.Release(e.Key, e.Rows, e.Data)
	}
	ts.srv.Drain()
	if res := ts.do(t, "GET", "/ready", nil, nil); res.status != 503 || res.body != `{"status":"draining"}` {
		t.Errorf("/ready while draining: got %d %s; want 503 draining", res.status, res.body)
	}
	if res := ts.do(t, "GET", "/health", nil, nil); res.status != 200 {
		t.Errorf("/health while draining: got %d; want 200", res.status)
	}
	if res := ts.do(t, "POST", "/health", nil, nil); res.status != 405 {
		t.Errorf("POST /health: got %d; want 405", res.status)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	ts := startServer(t, Options{}, buffer.Options{})
	ts.do(t, "POST", "/v0/events?name=ds", nil, []byte("{}\n{}"))
	ts.do(t, "POST", "/v0/events", nil, []byte("{}"))
	res := ts.do(t, "GET", "/metrics", nil, nil)
	if res.status != 200 {
		t.Fatalf("got %d; want 200", res.status)
	}
	for _, want := range []string{
		`tbproxy_events_accepted_total 2`,
		`tbproxy_http_requests_total{code="202",handler="events"} 1`,
		`tbproxy_http_requests_total{code="400",handler="events"} 1`,
		`tbproxy_requests_refused_total{reason="bad_request"} 1`,
	} {
		if !strings.Contains(res.body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(res.body, clientToken) {
		t.Errorf("/metrics contains a token")
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Second: "1", 1001 * time.Millisecond: "2", 3500 * time.Millisecond: "4", time.Minute: "60",
	} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("retryAfterSeconds(%s) = %q; want %q", d, got, want)
		}
	}
}

// TestRetryAfterFollowsTheDrain: a client refused by a full buffer that
// drains slowly is told to come back when there will be room, not in 1s.
func TestRetryAfterFollowsTheDrain(t *testing.T) {
	ts := startServer(t, Options{}, buffer.Options{MaxEvents: 100, MaxBytes: 1 << 20})
	one := []byte(`{}`)
	for range 100 {
		if res := ts.do(t, "POST", "/v0/events?name=ds", nil, one); res.status != 202 {
			t.Fatalf("filling: got %d", res.status)
		}
	}
	held := ts.buf.Take(nil)
	// Drain 10 events a second for three seconds, refilling what drains.
	for range 3 {
		time.Sleep(1100 * time.Millisecond)
		for _, e := range held[:10] {
			ts.buf.Release(e.Key, e.Rows, e.Data)
		}
		held = held[10:]
		for range 10 {
			ts.do(t, "POST", "/v0/events?name=ds", nil, one)
		}
		held = append(held, ts.buf.Take(nil)...)
	}
	res := ts.do(t, "POST", "/v0/events?name=ds", nil, bytes.Repeat([]byte("{}\n"), 50))
	secs, err := strconv.Atoi(res.header.Get("Retry-After"))
	if res.status != 429 || err != nil || secs < 3 || res.header.Get("X-RateLimit-Reset") != res.header.Get("Retry-After") {
		t.Errorf("50 events over a full buffer draining ~10/s: got %d, Retry-After %q, reset %q; want 429 and at least 3s",
			res.status, res.header.Get("Retry-After"), res.header.Get("X-RateLimit-Reset"))
	}
}
