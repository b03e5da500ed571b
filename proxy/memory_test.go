package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
)

// slowUpload starts a POST of a body of whole events, at most size bytes,
// and sends only its first sent bytes, holding the connection open: the
// request is being read, and holds what it sent. finish sends the rest and
// returns the answer.
func slowUpload(t *testing.T, addr string, size, sent int) (finish func() response) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	line := `{"pad":"` + strings.Repeat("x", 1000) + `"}` + "\n"
	body := bytes.Repeat([]byte(line), size/len(line))
	head := "POST /v0/events?name=slow HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(body[:sent]); err != nil {
		t.Fatal(err)
	}
	return func() response {
		if _, err := c.Write(body[sent:]); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return response{status: res.StatusCode, header: res.Header, body: string(b)}
	}
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRequestMemoryBudget: requests being read hold memory against
// RequestMemoryBytes; one that finds it spent gets 503 with Retry-After and
// a JSON body, nothing is stored, and once the others finish the budget is
// whole again.
func TestRequestMemoryBudget(t *testing.T) {
	const maxBody = 1 << 20
	ts := startServer(t, Options{MaxBodyBytes: maxBody, RequestMemoryBytes: 3 << 20},
		buffer.Options{MaxEvents: 100_000, MaxBytes: 64 << 20})
	addr := strings.TrimPrefix(ts.url, "http://")
	held := testutil.ToFloat64
	gauge := func() float64 { return held(ts.srv.m.requestMemory) }

	// Three uploads of 900 KB sent of 1 MB hold about 3 MB.
	var finish []func() response
	for range 3 {
		finish = append(finish, slowUpload(t, addr, maxBody, 900_000))
	}
	waitFor(t, "the uploads to hold their bytes", func() bool { return gauge() >= 2_700_000 })

	// A zstd body needs a decode buffer of MaxBodyBytes: no room.
	res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"},
		zstded(t, []byte(`{"a":1}`+"\n")))
	if res.status != 503 || res.header.Get("Retry-After") == "" || !strings.Contains(res.body, "REQUEST_MEMORY_BYTES") {
		t.Fatalf("over budget: got %d Retry-After %q %s; want 503 with Retry-After naming REQUEST_MEMORY_BYTES",
			res.status, res.header.Get("Retry-After"), res.body)
	}
	if got := testutil.ToFloat64(ts.srv.m.refusedReqs.WithLabelValues(reasonOverloaded)); got != 1 {
		t.Errorf("refused{reason=overloaded} = %v; want 1", got)
	}
	for i, f := range finish {
		if res := f(); res.status != 202 {
			t.Errorf("upload %d: got %d %s; want 202", i, res.status, res.body)
		}
	}
	waitFor(t, "the budget to be given back", func() bool { return gauge() == 0 })
	res = ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"},
		zstded(t, []byte(`{"a":1}`+"\n")))
	if res.status != 202 {
		t.Fatalf("after the uploads: got %d %s; want 202", res.status, res.body)
	}
	if data, _ := ts.stored(); strings.Count(data, "\n") != 3*(maxBody/1011)+1 {
		t.Errorf("stored %d events; want the three uploads' and one", strings.Count(data, "\n"))
	}
}

// TestZstdWindowBomb: a small zstd frame that declares a window far larger
// than MaxBodyBytes is refused 413, whatever it decodes to, and a frame
// that decodes past the limit is refused too.
func TestZstdWindowBomb(t *testing.T) {
	ts := startServer(t, Options{MaxBodyBytes: 64 << 10}, buffer.Options{})
	for name, plain := range map[string][]byte{
		"big window, small content": []byte(`{"a":1}` + "\n"),
		"decodes past the limit":    bytes.Repeat([]byte(" "), 40<<20),
	} {
		var frame bytes.Buffer
		w, err := zstd.NewWriter(&frame, zstd.WithWindowSize(32<<20))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(plain)
		w.Close()
		b := frame.Bytes()
		// The writer fits the window to a small content; declare 32 MiB
		// (window descriptor: exponent 15, 2^(10+15) bytes) as a hostile
		// client would.
		var h zstd.Header
		if err := h.Decode(b); err != nil || h.SingleSegment {
			t.Fatalf("frame header %+v, %v", h, err)
		}
		b[5] = 15 << 3
		if err := h.Decode(b); err != nil || h.WindowSize != 32<<20 {
			t.Fatalf("forged window: %d, %v", h.WindowSize, err)
		}
		res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"}, b)
		if res.status != 413 || !strings.HasPrefix(res.body, `{"error":`) {
			t.Errorf("%s: got %d %s; want 413 with a JSON error", name, res.status, res.body)
		}
	}
	small, _ := zstd.NewWriter(nil, zstd.WithWindowSize(32<<10))
	res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"}, small.EncodeAll([]byte(`{"a":1}`+"\n"), nil))
	if res.status != 202 {
		t.Errorf("a frame within the limit: got %d %s; want 202", res.status, res.body)
	}
}

// TestWaitingRequestsHoldNoBody: a wait=true request gives its body's memory
// back as soon as its rows are in the buffer, so many held requests cost the
// buffer's bytes, not their bodies': twenty bodies of 1 MB of blank lines
// are all held at once under a 3 MB budget.
func TestWaitingRequestsHoldNoBody(t *testing.T) {
	const maxBody = 1 << 20
	ts := startServer(t, Options{MaxBodyBytes: maxBody, RequestMemoryBytes: 3 << 20, WaitTimeout: 3 * time.Second},
		buffer.Options{MaxEvents: 100_000, MaxBytes: 1 << 20})
	blank := strings.Repeat(" ", 31) + "\n"
	body := gzipped(t, append(bytes.Repeat([]byte(blank), maxBody/len(blank)-1), []byte(`{"a":1}`+"\n")...))
	type answer struct {
		status int
		body   string
	}
	answers := make(chan answer, 20)
	for i := range 20 {
		go func() {
			req, _ := http.NewRequest("POST", ts.url+"/v0/events?name=ds&wait=true", bytes.NewReader(body))
			req.Header.Set("Content-Encoding", "gzip")
			r, err := http.DefaultClient.Do(req)
			if err != nil {
				answers <- answer{0, err.Error()}
				return
			}
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			answers <- answer{r.StatusCode, string(b)}
		}()
		// One at a time: each decodes alone, then waits.
		waitFor(t, "the request to wait", func() bool { return ts.buf.Len() == i+1 })
	}
	if got := testutil.ToFloat64(ts.srv.m.requestMemory); got != 0 {
		t.Errorf("request memory held by waiting requests = %v; want 0", got)
	}
	for range 20 {
		a := <-answers
		if a.status != 503 || !strings.Contains(a.body, "timed out waiting") {
			t.Errorf("got %d %s; want each to time out waiting (nothing drains this buffer)", a.status, a.body)
		}
	}
}
