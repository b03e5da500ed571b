package proxy

import (
	"bytes"
	stdjson "encoding/json"
	"fmt"
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

// benchEvent is a realistic ~240-byte event: nested fields, unicode, a
// big integer.
func benchEvent(i int) []byte {
	return fmt.Appendf(nil, `{"timestamp":"2026-11-23T14:50:%02d.123Z","session_id":"9f1c2e4a-8b7d-4c3e-a1f2-%012d","action":"page_hit","payload":{"path":"/zürich/東京","referrer":"https://example.com/?q=ü","ua":"Mozilla/5.0","id":12345678901234567890}}`, i%60, i)
}

func benchBody(k int) []byte {
	var b bytes.Buffer
	for i := range k {
		b.Write(benchEvent(i))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// BenchmarkSplitLines measures splitting and validating an NDJSON body.
//
// Recommended CLI invocation:
//
//	go test ./proxy -run '^$' -bench 'SplitLines|Valid' -benchmem -count 5
func BenchmarkSplitLines(b *testing.B) {
	for _, k := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("events=%d", k), func(b *testing.B) {
			body := benchBody(k)
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			var lines [][]byte
			for b.Loop() {
				var err *lineError
				if lines, err = splitLines(lines[:0], body); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*k)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkValid compares the validator on the hot path (goccy/go-json)
// with the standard library's, its baseline. goccy was picked with these
// numbers; see the README's performance section.
func BenchmarkValid(b *testing.B) {
	line := benchEvent(7)
	for _, v := range []struct {
		name  string
		valid func([]byte) bool
	}{{"goccy", validJSON}, {"stdlib", stdjson.Valid}} {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(line)))
			for b.Loop() {
				if !v.valid(line) {
					b.Fatal("invalid")
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkHandler measures the whole accept path, HTTP parsing to buffer,
// over an in-memory listener with parallel clients; a consumer releases
// what is stored so the buffer never fills.
//
// Recommended CLI invocation:
//
//	go test ./proxy -run '^$' -bench Handler -benchmem -count 5
//
// The limited cases send as a named client with both limits on (set high
// enough never to refuse), and measure what the clients file and the
// limiter cost per request.
func BenchmarkHandler(b *testing.B) {
	for _, c := range []struct {
		name  string
		opts  func() Options
		token string
	}{
		{"open", func() Options { return Options{} }, ""},
		{"limited", func() Options {
			set, err := clients.Parse([]byte(`{"clients":[{"name":"bench","token_sha256":"` + clients.HashToken([]byte(webToken)) +
				`","datasources":["bench"],"events_per_minute":1000000000000,"events_per_day":1000000000000}]}`))
			if err != nil {
				b.Fatal(err)
			}
			return Options{Clients: set, Limiter: limits.New(limits.Options{})}
		}, webToken},
	} {
		for _, k := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("%s/events=%d", c.name, k), func(b *testing.B) { benchHandler(b, c.opts(), c.token, k) })
		}
	}
}

func benchHandler(b *testing.B, opts Options, token string, k int) {
	buf := buffer.New(buffer.Options{MaxEvents: 1 << 30, MaxBytes: 1 << 40})
	srv, err := New(buf, opts, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	ln := fasthttputil.NewInmemoryListener()
	go srv.Serve(ln) //nolint:errcheck // ends with ln.Close
	defer ln.Close()
	stop := make(chan struct{})
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		var got []buffer.Entry
		for {
			select {
			case <-buf.Ready():
			case <-stop:
				return
			}
			got = buf.Take(got)
			for _, e := range got {
				buf.Release(e.Key, e.Rows, e.Data)
			}
		}
	}()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, ReadTimeout: 10 * time.Second}
	body := benchBody(k)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://proxy/v0/events?name=bench")
		req.Header.SetMethod("POST")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		req.SetBody(body)
		for pb.Next() {
			if err := client.Do(req, resp); err != nil || resp.StatusCode() != 202 {
				b.Errorf("status %d, err %v", resp.StatusCode(), err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*k)/b.Elapsed().Seconds(), "events/s")
	close(stop)
	<-drained
}
