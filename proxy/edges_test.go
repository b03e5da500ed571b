package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
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
