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
	"github.com/tbproxy/tbproxy/internal/poll"
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
	poll.Until(t, "the uploads to hold their bytes", func() bool { return gauge() >= 2_700_000 })

	// A zstd body that declares 900 KB of content needs a decode buffer of
	// that size: there is no room for it.
	big := bytes.Repeat([]byte(`{"pad":"`+strings.Repeat("z", 90)+`"}`+"\n"), 9000) // 900 KB
	res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"}, zstded(t, big))
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
	poll.Until(t, "the budget to be given back", func() bool { return gauge() == 0 })
	res = ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"}, zstded(t, big))
	if res.status != 202 {
		t.Fatalf("after the uploads: got %d %s; want 202", res.status, res.body)
	}
	if data, _ := ts.stored(); strings.Count(data, "\n") != 3*(maxBody/1011)+9000 {
		t.Errorf("stored %d events; want the three uploads' and the zstd body's", strings.Count(data, "\n"))
	}
}

// TestZstdWindowBomb: a zstd frame is decoded whole into a buffer no
// larger than MaxBodyBytes+1, so the window it declares costs nothing of
// its own: a small frame declaring 32 MiB is accepted (a streaming encoder
// declares 8 MiB even for a small body), a frame declaring more than 32 MiB
// is refused, and one that decodes past the limit is refused 413.
func TestZstdWindowBomb(t *testing.T) {
	ts := startServer(t, Options{MaxBodyBytes: 64 << 10}, buffer.Options{})
	// frame encodes plain as a streaming writer does (no content size),
	// declaring a window of 2^(10+exp) bytes plus mantissa eighths of it,
	// as a hostile client could.
	frame := func(plain []byte, exp, mantissa byte) []byte {
		var b bytes.Buffer
		w, err := zstd.NewWriter(&b, zstd.WithWindowSize(32<<20))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(plain)
		w.Close()
		f := b.Bytes()
		var h zstd.Header
		if err := h.Decode(f); err != nil || h.SingleSegment || h.HasFCS {
			t.Fatalf("frame header %+v, %v", h, err)
		}
		f[5] = exp<<3 | mantissa
		if base := uint64(1) << (10 + exp); h.Decode(f) != nil || h.WindowSize != base+uint64(mantissa)*base/8 {
			t.Fatalf("forged window: %d, %v", h.WindowSize, err)
		}
		return f
	}
	small := []byte(`{"a":1}` + "\n")
	for _, c := range []struct {
		name string
		body []byte
		want int
	}{
		{"32 MiB window, small content", frame(small, 15, 0), 202},
		{"64 MiB window", frame(small, 16, 0), 413},
		{"decodes past the limit", frame(bytes.Repeat([]byte(" "), 40<<20), 15, 0), 413},
	} {
		res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"}, c.body)
		if res.status != c.want || !strings.HasPrefix(res.body, "{") {
			t.Errorf("%s: got %d %s; want %d", c.name, res.status, res.body, c.want)
		}
	}
	if got := testutil.ToFloat64(ts.srv.m.requestMemory); got != 0 {
		t.Errorf("request memory still held after the requests: %v", got)
	}
	// Above 32 MiB the window allowed is MAX_BODY_BYTES itself: a frame
	// declaring exactly that (40 MiB: 32 MiB and two eighths) is accepted.
	big := startServer(t, Options{MaxBodyBytes: 40 << 20}, buffer.Options{})
	if res := big.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"}, frame(small, 15, 2)); res.status != 202 {
		t.Errorf("40 MiB window under a 40 MiB MAX_BODY_BYTES: got %d %s; want 202", res.status, res.body)
	}
}

// TestZstdStreamedGrows: a streamed zstd body (no declared content size)
// that decodes to far more than the first buffer is decoded whole, growing
// the buffer as needed, byte-identical.
func TestZstdStreamedGrows(t *testing.T) {
	// Exactly MaxBodyBytes, an odd size (32767 lines of 32 bytes and one of
	// 33), compressed to a few KB.
	const limit = 1<<20 + 1
	ts := startServer(t, Options{MaxBodyBytes: limit}, buffer.Options{MaxEvents: 100_000, MaxBytes: 4 << 20})
	plain := append(bytes.Repeat([]byte(`{"event":"page_view","n":12345}`+"\n"), 32_767), `{"event":"page_view","n":123456}`+"\n"...)
	if len(plain) != limit {
		t.Fatalf("body of %d bytes; want %d", len(plain), limit)
	}
	var b bytes.Buffer
	w, _ := zstd.NewWriter(&b)
	w.Write(plain)
	w.Close()
	res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "zstd"}, b.Bytes())
	if res.status != 202 || res.body != `{"successful_rows":32768,"quarantined_rows":0}` {
		t.Fatalf("got %d %s; want all 32768 rows", res.status, res.body)
	}
	if data, _ := ts.stored(); data != string(plain) {
		t.Errorf("stored %d bytes; want the %d sent, byte-identical", len(data), len(plain))
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
	timedOut := 0 // answers read while sending
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
		// One at a time: each decodes alone, then waits. Earlier ones may
		// time out meanwhile; any other answer now is a refusal: say which.
		poll.Until(t, "the request to wait", func() bool {
			select {
			case a := <-answers:
				if a.status != 503 || !strings.Contains(a.body, "timed out waiting") {
					t.Fatalf("request %d: an answer %d %s before its rows were stored", i, a.status, a.body)
				}
				timedOut++
			default:
			}
			return ts.buf.Len() == i+1
		})
	}
	if got := testutil.ToFloat64(ts.srv.m.requestMemory); got != 0 {
		t.Errorf("request memory held by waiting requests = %v; want 0", got)
	}
	for range 20 - timedOut {
		a := <-answers
		if a.status != 503 || !strings.Contains(a.body, "timed out waiting") {
			t.Errorf("got %d %s; want each to time out waiting (nothing drains this buffer)", a.status, a.body)
		}
	}
}

// TestBudgetUsableToItsLastByte: REQUEST_MEMORY_BYTES is a limit reached
// exactly, not one byte short of it, and what is refused holds nothing.
func TestBudgetUsableToItsLastByte(t *testing.T) {
	b := &memBudget{max: 100}
	c := charge{b: b}
	if !c.take(100) {
		t.Fatal("100 bytes of a 100-byte budget refused")
	}
	if c.take(1) {
		t.Fatal("a byte past the budget taken")
	}
	if got := b.used.Load(); got != 100 {
		t.Errorf("used %d after a refusal; want 100", got)
	}
	c.release()
	if got := b.used.Load(); got != 0 {
		t.Errorf("used %d after release; want 0", got)
	}
}

// TestGzipSizedFromItsTrailer: a gzip body is decoded into a buffer of the
// size its trailer states, reserved at once, so a body that fits the budget
// is accepted; grown by doubling instead, its last step would ask for
// nearly twice the body and be refused.
func TestGzipSizedFromItsTrailer(t *testing.T) {
	big := bytes.Repeat([]byte(`{"pad":"`+strings.Repeat("g", 90)+`"}`+"\n"), 30_000) // 3 MB
	ts := startServer(t, Options{MaxBodyBytes: 10 << 20, RequestMemoryBytes: 4 << 20},
		buffer.Options{MaxEvents: 100_000, MaxBytes: 64 << 20})
	res := ts.do(t, "POST", "/v0/events?name=ds", map[string]string{"Content-Encoding": "gzip"}, gzipped(t, big))
	if res.status != 202 {
		t.Fatalf("a 3 MB gzip body (and its line index) under a 4 MiB budget: got %d %s; want 202", res.status, res.body)
	}
}

// TestLineIndexCharged: a request's index of its lines (24 bytes a line)
// is charged to REQUEST_MEMORY_BYTES like its body: 100,000 lines of "{}"
// cost 2.4 MB beyond their 300 KB, so a 1.5 MB budget refuses them and a
// 3.5 MB one takes them, once.
func TestLineIndexCharged(t *testing.T) {
	body := bytes.Repeat([]byte("{}\n"), 100_000)
	for _, tc := range []struct {
		budget, status int
	}{
		{1536 << 10, 503},
		{3584 << 10, 202},
	} {
		ts := startServer(t, Options{MaxBodyBytes: 1 << 20, RequestMemoryBytes: tc.budget},
			buffer.Options{MaxEvents: 200_000, MaxBytes: 64 << 20})
		if res := ts.do(t, "POST", "/v0/events?name=ds", nil, body); res.status != tc.status {
			t.Errorf("budget %d: got %d %s; want %d", tc.budget, res.status, res.body, tc.status)
		}
	}
}
