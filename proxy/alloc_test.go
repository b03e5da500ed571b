//go:build !race

package proxy

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/clients"
	"github.com/tbproxy/tbproxy/limits"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// TestAcceptPathAllocations guards the hot path: splitting and validating
// allocate nothing, and in steady state (requests stored, taken and
// released) storing a request allocates nothing either, however many events
// it holds: its lines are copied into reused buffer memory.
func TestAcceptPathAllocations(t *testing.T) {
	for _, k := range []int{1, 100} {
		body := benchBody(k)
		lines := make([][]byte, 0, k)
		if n := testing.AllocsPerRun(100, func() {
			lines, _ = splitLines(lines[:0], body)
		}); n != 0 {
			t.Errorf("splitLines with %d events: %v allocs per run; want 0", k, n)
		}
		buf := buffer.New(buffer.Options{MaxEvents: 1 << 30, MaxBytes: 1 << 40})
		key := buffer.Key{Datasource: "ds"}
		var taken []buffer.Entry
		if n := testing.AllocsPerRun(10_000, func() {
			if err := buf.Put(key, lines); err != nil {
				t.Fatal(err)
			}
			taken = buf.Take(taken)
			for _, e := range taken {
				buf.Release(e.Key, e.Rows, e.Data)
			}
		}); n != 0 {
			t.Errorf("Put, Take and Release with %d events: %v allocs per run; want 0", k, n)
		}
	}
}

// TestHandlerAllocations guards the whole request over an in-memory
// connection: HTTP parsing, reading the body, validation, buffering and the
// 202. The one allocation per request left is fasthttp's own: with
// StreamRequestBody (which passthrough uploads need) it discards what a
// handler left unread through an io.LimitReader, even when nothing is left.
func TestHandlerAllocations(t *testing.T) {
	// A named client without limits, beside the limiter, costs no
	// allocation either: a digest lookup and a cached counter.
	set, err := clients.Parse([]byte(`{"clients":[{"name":"web","token_sha256":"` + clients.HashToken([]byte(webToken)) + `","datasources":["ds"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		opts  Options
		token string
	}{
		{"open", Options{}, ""},
		{"named client", Options{Clients: set, Limiter: limits.New(limits.Options{}), Idempotency: openKeys(t)}, webToken},
	} {
		t.Run(c.name, func(t *testing.T) { handlerAllocations(t, c.opts, c.token) })
	}
}

func handlerAllocations(t *testing.T, opts Options, token string) {
	buf := buffer.New(buffer.Options{MaxEvents: 1 << 30, MaxBytes: 1 << 40})
	srv, err := New(buf, opts, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln := fasthttputil.NewInmemoryListener()
	go srv.Serve(ln) //nolint:errcheck // ends with ln.Close
	defer ln.Close()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, ReadTimeout: 10 * time.Second}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	var taken []buffer.Entry
	for _, k := range []int{1, 100} {
		req.SetRequestURI("http://proxy/v0/events?name=ds")
		req.Header.SetMethod("POST")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		req.SetBody(benchBody(k))
		n := testing.AllocsPerRun(2000, func() {
			if err := client.Do(req, resp); err != nil || resp.StatusCode() != 202 {
				t.Fatalf("status %d, err %v", resp.StatusCode(), err)
			}
			taken = buf.Take(taken)
			for _, e := range taken {
				buf.Release(e.Key, e.Rows, e.Data)
			}
		})
		if n > 1 {
			t.Errorf("a request of %d events: %v allocs; want at most 1 (fasthttp's)", k, n)
		}
	}
}
