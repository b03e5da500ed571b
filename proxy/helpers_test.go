package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
)

// testServer is a real proxy.Server on 127.0.0.1:0 in front of a buffer
// nothing drains, so tests can inspect exactly what was stored.
type testServer struct {
	url string
	buf *buffer.Buffer
	srv *Server
	reg *prometheus.Registry
}

func startServer(t *testing.T, opts Options, bopts buffer.Options) *testServer {
	t.Helper()
	return startServerLogging(t, opts, bopts, slog.New(slog.DiscardHandler))
}

// startServerLogging is startServer with the server's log going to log.
func startServerLogging(t *testing.T, opts Options, bopts buffer.Options, log *slog.Logger) *testServer {
	t.Helper()
	if bopts.MaxEvents == 0 {
		bopts = buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20}
	}
	buf := buffer.New(bopts)
	reg := prometheus.NewRegistry()
	opts.Gatherer = reg
	srv, err := New(buf, opts, reg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{url: "http://" + ln.Addr().String(), buf: buf, srv: srv, reg: reg}
}

type response struct {
	status int
	header http.Header
	body   string
}

// do sends one request with the standard library client, as a real client would.
func (ts *testServer) do(t *testing.T, method, pathQuery string, header map[string]string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, ts.url+pathQuery, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, pathQuery, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: string(b)}
}

// stored returns the NDJSON of every entry in the buffer, and their keys.
func (ts *testServer) stored() (string, []buffer.Key) {
	var all []byte
	var keys []buffer.Key
	for _, e := range ts.buf.Take(nil) {
		all = append(all, e.Data...)
		keys = append(keys, e.Key)
	}
	return string(all), keys
}
