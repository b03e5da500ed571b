package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// TestEdgesOfTheContract: requests at the exact edges of the limits are
// accepted, and a wait=true request with nothing to wait for is answered,
// not held until WAIT_TIMEOUT's 503.
func TestEdgesOfTheContract(t *testing.T) {
	ts := startServer(t, Options{MaxBodyBytes: 1008, WaitTimeout: 10 * time.Second}, buffer.Options{MaxEvents: 3, MaxBytes: 1 << 20})
	ok := `{"successful_rows":%d,"quarantined_rows":0}`
	for _, tc := range []struct {
		name   string
		path   string
		header map[string]string
		body   []byte
		rows   int
	}{
		{"as many lines as the whole buffer holds", "/v0/events?name=a", nil, []byte("{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"), 3},
		{"zstd declaring exactly MAX_BODY_BYTES", "/v0/events?name=b", map[string]string{"Content-Encoding": "zstd"},
			zstded(t, []byte(`{"a":"`+strings.Repeat("x", 1000)+`"}`)), 1},
		{"wait=true with no rows", "/v0/events?name=c&wait=true", nil, nil, 0},
	} {
		res := ts.do(t, "POST", tc.path, tc.header, tc.body)
		if res.status != 202 && res.status != 200 || res.body != fmt.Sprintf(ok, tc.rows) {
			t.Errorf("%s: got %d %s; want %d rows accepted", tc.name, res.status, res.body, tc.rows)
		}
		for _, e := range ts.buf.Take(nil) { // room for the next
			ts.buf.Release(e.Key, e.Rows, e.Data)
		}
	}
}

// TestWaitTimeoutRetryAfter: a wait=true request still waiting at
// WAIT_TIMEOUT gets 503 with Retry-After of WAIT_TIMEOUT in whole seconds.
func TestWaitTimeoutRetryAfter(t *testing.T) {
	ts := startServer(t, Options{WaitTimeout: 1500 * time.Millisecond}, buffer.Options{})
	res := ts.do(t, "POST", "/v0/events?name=ds&wait=true", nil, []byte(`{"a":1}`))
	if res.status != 503 || res.header.Get("Retry-After") != "2" {
		t.Errorf("got %d Retry-After %q; want 503 and 2 (1.5s rounded)", res.status, res.header.Get("Retry-After"))
	}
}

// TestCompressedBodyOverTheLimit: MAX_BODY_BYTES bounds the body as sent
// too: a gzip body larger than it is refused 413 once the limit is read
// past, not cut there and then found corrupt (400).
func TestCompressedBodyOverTheLimit(t *testing.T) {
	src := rand.New(rand.NewPCG(1, 2))
	noise := make([]byte, 3000)
	for i := range noise {
		noise[i] = byte(src.Uint32())
	}
	plain := []byte(`{"n":"` + base64.StdEncoding.EncodeToString(noise) + `"}`)
	gz := gzipped(t, plain)
	ts := startServer(t, Options{MaxBodyBytes: len(gz) - 1}, buffer.Options{})
	res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "gzip"}, gz)
	if res.status != 413 {
		t.Errorf("gzip body of %d bytes over a %d-byte limit: got %d %s; want 413", len(gz), len(gz)-1, res.status, res.body)
	}
	// The same, chunked: no Content-Length to refuse it by before reading.
	req, err := http.NewRequest("POST", ts.url+"/v0/events?name=ds", io.MultiReader(bytes.NewReader(gz)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Encoding", "gzip")
	chunked, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	chunked.Body.Close()
	if chunked.StatusCode != 413 {
		t.Errorf("chunked gzip body over the limit: got %d; want 413", chunked.StatusCode)
	}
}

// TestResetConnectionsGiveBackTheirPlace: a client that resets its
// connection instead of closing it cleanly frees its MAX_CONNECTIONS place
// all the same.
func TestResetConnectionsGiveBackTheirPlace(t *testing.T) {
	ts := startServer(t, Options{MaxConnections: 2}, buffer.Options{})
	addr := strings.TrimPrefix(ts.url, "http://")
	for range 3 { // with places never given back, the second round finds none
		var conns []*net.TCPConn
		for range 2 {
			poll.Until(t, "a place for a connection", func() bool {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
				if res, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || res.StatusCode != 200 {
					c.Close()
					return false
				}
				conns = append(conns, c.(*net.TCPConn))
				return true
			})
		}
		for _, c := range conns {
			c.SetLinger(0) // close with a reset
			c.Close()
		}
	}
}

// TestPassThroughWithoutToken: in pass-through mode a request carrying no
// token goes on to upstream, which answers it as it would the client
// (Tinybird's public endpoints need none); the proxy does not refuse it.
func TestPassThroughWithoutToken(t *testing.T) {
	api, requests := fakeAPI(t)
	ts := startServer(t, Options{PassThrough: true, Passthrough: PassthroughOptions{BaseURL: api.URL, Timeout: time.Second}}, buffer.Options{})
	res := ts.do(t, "GET", "/v0/pipes/open.json", nil, nil)
	if res.status != 201 || len(requests()) != 1 || requests()[0].auth != "" {
		t.Errorf("got %d %s with %d upstream requests; want upstream's 201, asked once, with no token", res.status, res.body, len(requests()))
	}
}

// TestOptionDefaults: what an operator sets is used as given; what is left
// unset (zero), or out of range, gets the documented default.
func TestOptionDefaults(t *testing.T) {
	var zero Options
	zero.setDefaults()
	want := Options{MaxBodyBytes: 10 << 20, RequestMemoryBytes: 128 << 20, HighWatermark: 0.9, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second, WaitTimeout: 10 * time.Second, CORSOrigins: []string{"*"},
		MaxDatasources: 1000, MaxConnections: 10_000, MaxHeaderBytes: 16 << 10, MaxTokenBytes: 4 << 10}
	zero.Gatherer, want.Gatherer = nil, nil
	if fmt.Sprint(zero) != fmt.Sprint(want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", zero, want)
	}
	set := Options{MaxBodyBytes: 1, RequestMemoryBytes: 2, HighWatermark: 1, ReadTimeout: time.Second, WriteTimeout: 2 * time.Second,
		IdleTimeout: 3 * time.Second, WaitTimeout: 4 * time.Second, CORSOrigins: []string{"https://a.example"},
		MaxDatasources: 5, MaxConnections: 6, MaxHeaderBytes: 7, MaxTokenBytes: 8}
	got := set
	got.setDefaults()
	got.Gatherer = nil
	if fmt.Sprint(got) != fmt.Sprint(set) {
		t.Errorf("set options changed:\n got %+v\nwant %+v", got, set)
	}
	for _, hw := range []float64{-0.5, 1.5} {
		o := Options{HighWatermark: hw}
		o.setDefaults()
		if o.HighWatermark != 0.9 {
			t.Errorf("HighWatermark %g became %g; want the default 0.9", hw, o.HighWatermark)
		}
	}
}

// TestRequestIDLength: a client's X-Request-Id of up to 128 printable
// bytes is echoed; a longer one, or one with a space, is replaced by the
// proxy's own.
func TestRequestIDLength(t *testing.T) {
	ts := startServer(t, Options{}, buffer.Options{})
	for id, echoed := range map[string]bool{
		strings.Repeat("r", 128): true, strings.Repeat("r", 129): false,
		"!edges~":    true, // the first and last printable bytes
		"with space": false,
	} {
		got := ts.do(t, "GET", "/health", map[string]string{"X-Request-Id": id}, nil).header.Get("X-Request-Id")
		if (got == id) != echoed || got == "" {
			t.Errorf("X-Request-Id %q (%d bytes): answered %q; want it echoed: %v", id, len(id), got, echoed)
		}
	}
}
