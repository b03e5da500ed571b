package proxy

import (
	"strings"
	"testing"

	"github.com/tbproxy/tbproxy/buffer"
)

// TestEarlyAnswersArrive: an answer written before the whole request was
// read (headers too large, a body over MAX_BODY_BYTES) reaches the client,
// every time, instead of being destroyed by a connection reset.
func TestEarlyAnswersArrive(t *testing.T) {
	ts := startServer(t, Options{MaxHeaderBytes: 1024, MaxBodyBytes: 64 << 10}, buffer.Options{})
	bigHeader := map[string]string{"X-Padding": strings.Repeat("x", 4096)}
	bigBody := []byte(strings.Repeat(`{"pad":"`+strings.Repeat("x", 1000)+`"}`+"\n", 1000))
	for range 100 {
		if res := ts.do(t, "POST", "/v0/events?name=ds", bigHeader, []byte(`{}`)); res.status != 431 {
			t.Fatalf("headers too large: got %d %s; want 431", res.status, res.body)
		}
		if res := ts.do(t, "POST", "/v0/events?name=ds", nil, bigBody); res.status != 413 {
			t.Fatalf("body too large: got %d %s; want 413", res.status, res.body)
		}
	}
}
