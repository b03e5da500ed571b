package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/upstream/tinybird"
)

// startDelivering runs a real server and a real flusher shipping to fb, as
// main wires them, so wait=true can be tested end to end.
func startDelivering(t *testing.T, fb *fakebird.Server, opts Options, fopts flusher.Options) *testServer {
	t.Helper()
	return startDeliveringBuffer(t, fb, opts, fopts, buffer.Options{})
}

// startDeliveringBuffer is startDelivering with a buffer of bopts.
func startDeliveringBuffer(t *testing.T, fb *fakebird.Server, opts Options, fopts flusher.Options, bopts buffer.Options) *testServer {
	t.Helper()
	ts := startServer(t, opts, bopts)
	up, err := tinybird.New(tinybird.Options{BaseURL: fb.URL(), Token: "upstream", Wait: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	fopts.Upstream = up
	if fopts.FlushInterval == 0 {
		fopts.FlushInterval = 20 * time.Millisecond
	}
	fopts.MinBackoff, fopts.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	fopts.DrainTimeout = 2 * time.Second
	fl, err := flusher.New(ts.buf, fopts, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, flusher.ErrUndelivered) {
			t.Errorf("flusher Run: %v", err)
		}
	})
	return ts
}

func TestWaitTrue(t *testing.T) {
	tests := []struct {
		name       string
		fault      *fakebird.Response
		wantStatus int
		wantBody   string
	}{
		{"delivered", nil, 200, `{"successful_rows":3,"quarantined_rows":0}`},
		{"upstream refuses the token", &fakebird.Response{Status: 403, Body: `{"error":"token has no DATASOURCE:APPEND scope"}`},
			403, `{"error":"token has no DATASOURCE:APPEND scope"}`},
		{"partial write in a materialized view", &fakebird.Response{Status: 422, Body: `{"error":"MV failed"}`},
			422, `{"error":"MV failed"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fb := fakebird.NewTB(t, fakebird.Options{})
			if tt.fault != nil {
				fb.SetFault(fakebird.Always(*tt.fault))
			}
			ts := startDelivering(t, fb, Options{}, flusher.Options{})
			res := ts.do(t, "POST", "/v0/events?name=ds&wait=true", nil, []byte("{\"a\":1}\n{\"a\":2}\n{\"a\":3}"))
			if res.status != tt.wantStatus || res.body != tt.wantBody {
				t.Errorf("got %d %s; want %d %s", res.status, res.body, tt.wantStatus, tt.wantBody)
			}
			if tt.wantStatus == 200 && fb.RowCount() != 3 {
				t.Errorf("200 before the rows were upstream: %d rows there", fb.RowCount())
			}
		})
	}
}

// TestWaitTrueSharesABatch: many waiting clients whose rows share batches
// each get their own row count.
func TestWaitTrueSharesABatch(t *testing.T) {
	fb := fakebird.NewTB(t, fakebird.Options{})
	ts := startDelivering(t, fb, Options{}, flusher.Options{FlushInterval: 200 * time.Millisecond})
	results := make(chan response, 20)
	for i := range 20 {
		go func() {
			body := strings.Repeat("{\"n\":1}\n", i+1)
			results <- ts.do(t, "POST", "/v0/events?name=ds&wait=true", nil, []byte(body))
		}()
	}
	total := 0
	for range 20 {
		res := <-results
		if res.status != 200 {
			t.Fatalf("got %d %s; want 200", res.status, res.body)
		}
		var n int
		if _, err := fmt.Sscanf(res.body, `{"successful_rows":%d,"quarantined_rows":0}`, &n); err != nil {
			t.Fatalf("body %s: %v", res.body, err)
		}
		total += n
	}
	if total != 210 || fb.RowCount() != 210 {
		t.Errorf("clients were told %d rows, upstream has %d; want 210 and 210", total, fb.RowCount())
	}
	if fb.RequestCount() >= 20 {
		t.Errorf("%d upstream requests for 20 clients; want them batched", fb.RequestCount())
	}
}

// TestWaitTimeout: a client still waiting after WaitTimeout gets 503 with
// Retry-After, and its rows stay queued and are delivered later.
func TestWaitTimeout(t *testing.T) {
	fb := fakebird.NewTB(t, fakebird.Options{})
	fb.Script(fakebird.Response{Status: 503}, fakebird.Response{Status: 503}, fakebird.Response{Status: 503},
		fakebird.Response{Status: 200, Delay: 500 * time.Millisecond})
	ts := startDelivering(t, fb, Options{WaitTimeout: 100 * time.Millisecond}, flusher.Options{})
	res := ts.do(t, "POST", "/v0/events?name=ds&wait=true", nil, []byte(`{"a":1}`))
	if res.status != 503 || res.header.Get("Retry-After") == "" || !strings.Contains(res.body, "still queued") {
		t.Fatalf("got %d %q %s; want 503, Retry-After and an error saying the rows are still queued",
			res.status, res.header.Get("Retry-After"), res.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := fb.WaitRows(ctx, 1); err != nil {
		t.Fatalf("the timed-out request's row was not delivered: %v", err)
	}
}

// TestDeniedTokenRefusedAtOnce: in pass-through mode, after upstream answered
// 403 for a token, new requests with it get 403 instead of 202.
func TestDeniedTokenRefusedAtOnce(t *testing.T) {
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{"good"}})
	ts := startDelivering(t, fb, Options{PassThrough: true}, flusher.Options{TokenDenyTTL: time.Hour})
	bad := map[string]string{"Authorization": "Bearer revoked"}
	if res := ts.do(t, "POST", "/v0/events?name=ds&wait=true", bad, []byte(`{"a":1}`)); res.status != 403 {
		t.Fatalf("first request with a revoked token: got %d %s; want upstream's 403", res.status, res.body)
	}
	res := ts.do(t, "POST", "/v0/events?name=ds", bad, []byte(`{"a":1}`))
	if res.status != 403 || strings.Contains(res.body, "revoked") {
		t.Errorf("next request: got %d %s; want 403 at once, without the token", res.status, res.body)
	}
	if res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Authorization": "Bearer good"}, []byte(`{"a":1}`)); res.status != 202 {
		t.Errorf("another token: got %d; want 202", res.status)
	}
}

// TestJunkTokenFloodDoesNotStarveRealTokens: in pass-through mode, a flood
// of requests with distinct junk tokens (each its own upstream request,
// each answered 403 slowly) holds at most MAX_UNVERIFIED_TOKENS of them at
// once; the rest get 429 at the door. A token upstream accepted before the
// flood keeps being delivered: its wait=true request is answered 200, not
// left behind thousands of junk batches.
func TestJunkTokenFloodDoesNotStarveRealTokens(t *testing.T) {
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{"good"}})
	fb.SetFault(func(r *fakebird.Request) *fakebird.Response {
		if r.Token != "good" {
			return &fakebird.Response{Status: 403, Delay: 50 * time.Millisecond}
		}
		return nil
	})
	ts := startDeliveringBuffer(t, fb, Options{PassThrough: true, WaitTimeout: 5 * time.Second},
		flusher.Options{Concurrency: 2, TokenDenyTTL: time.Minute},
		buffer.Options{MaxEvents: 100_000, MaxBytes: 64 << 20, MaxUnverifiedTokens: 4})
	if res := ts.do(t, "POST", "/v0/events?name=ds&wait=true&token=good", nil, []byte(`{"a":0}`)); res.status != 200 {
		t.Fatalf("before the flood: got %d %s", res.status, res.body)
	}
	var wg sync.WaitGroup
	var tooMany atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			for i := range 100 {
				res, err := http.Post(fmt.Sprintf("%s/v0/events?name=ds&token=junk-%d-%d", ts.url, w, i), "application/x-ndjson", strings.NewReader(`{}`))
				if err != nil {
					t.Errorf("junk request: %v", err)
					return
				}
				res.Body.Close()
				if res.StatusCode == 429 {
					tooMany.Add(1)
				}
			}
		})
	}
	wg.Wait()
	res := ts.do(t, "POST", "/v0/events?name=ds&wait=true&token=good", nil, []byte(`{"a":1}`))
	if res.status != 200 {
		t.Fatalf("a verified token during the flood: got %d %s; want 200", res.status, res.body)
	}
	if tooMany.Load() == 0 {
		t.Error("no junk token was refused at the door")
	}
	junk := 0
	for _, r := range fb.Requests() {
		if r.Token != "good" {
			junk++
		}
	}
	if junk > 800-int(tooMany.Load()) {
		t.Errorf("upstream got %d junk requests for %d admitted", junk, 800-tooMany.Load())
	}
}
