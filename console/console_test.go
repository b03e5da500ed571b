package console

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/internal/poll"
	"github.com/tbproxy/tbproxy/upstream/filesink"
	"github.com/valyala/fasthttp"
)

const token = "console-test-token-0123456789"

// rig is a console over a real buffer and flusher delivering to files,
// served on a loopback socket.
type rig struct {
	buf  *buffer.Buffer
	fl   *flusher.Flusher
	c    *Console
	base string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	reg := prometheus.NewRegistry()
	sink, err := filesink.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	fl, err := flusher.New(buf, flusher.Options{Upstream: sink, FlushInterval: time.Hour, MaxStreams: 3}, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fl.Run(ctx) }()
	c := New(Options{Token: token, Buffer: buf, Flusher: fl, Gatherer: reg, Log: log})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: c.Handler}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Shutdown()
		buf.Close()
		cancel()
		<-done
	})
	return &rig{buf: buf, fl: fl, c: c, base: "http://" + ln.Addr().String()}
}

func (r *rig) put(t *testing.T, ds string, rows ...string) {
	t.Helper()
	lines := make([][]byte, len(rows))
	for i, row := range rows {
		lines[i] = []byte(row)
	}
	if err := r.buf.Put(buffer.Key{Datasource: ds}, lines); err != nil {
		t.Fatal(err)
	}
}

// do sends a request with the given Authorization header value ("" for
// none) and extra headers, and returns the status, headers and body.
func do(t *testing.T, method, url, auth string, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// TestAccess: every path asks for the token, as a bearer token or as the
// Basic password (so a browser can log in); anything else gets 401 with a
// Basic challenge and a JSON error that does not echo what was sent.
func TestAccess(t *testing.T) {
	r := newRig(t)
	for _, path := range []string{"/-/status", "/-/api/streams", "/-/nothing"} {
		for name, auth := range map[string]string{
			"none": "", "wrong bearer": "Bearer wrong-token-0123456789", "wrong basic": basic("admin", "nope"),
			"token as user": basic(token, ""), "garbage": "Basic !!!", "other scheme": "Token " + token,
		} {
			status, h, body := do(t, http.MethodGet, r.base+path, auth)
			if status != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic ") ||
				!json.Valid(body) || strings.Contains(string(body), "nope") {
				t.Errorf("%s with %s: %d %q %s; want 401 with a Basic challenge and a JSON error", path, name, status, h.Get("WWW-Authenticate"), body)
			}
		}
	}
	for name, auth := range map[string]string{"bearer": "Bearer " + token, "basic": basic("anyone", token)} {
		if status, h, body := do(t, http.MethodGet, r.base+"/-/status", auth); status != http.StatusOK ||
			!strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") || len(body) == 0 {
			t.Errorf("page with %s: %d %q; want the page, not frameable", name, status, h.Get("Content-Type"))
		}
	}
	if status, _, _ := do(t, http.MethodGet, r.base+"/-/nothing", "Bearer "+token); status != http.StatusNotFound {
		t.Errorf("unknown console path: %d; want 404", status)
	}
}

// TestActionsArePostOnlyAndSameOrigin: flush, pause and resume take POST
// only, need a valid datasource name (pause and resume), and are refused
// when a browser sends them from another origin.
func TestActionsArePostOnlyAndSameOrigin(t *testing.T) {
	r := newRig(t)
	auth := "Bearer " + token
	if status, h, _ := do(t, http.MethodGet, r.base+"/-/api/pause?name=ds", auth); status != http.StatusMethodNotAllowed || h.Get("Allow") != "POST" {
		t.Errorf("GET pause: %d Allow %q; want 405, Allow: POST", status, h.Get("Allow"))
	}
	if status, _, _ := do(t, http.MethodPost, r.base+"/-/api/streams", auth); status != http.StatusMethodNotAllowed {
		t.Errorf("POST streams: %d; want 405", status)
	}
	for url, want := range map[string]int{
		"/-/api/pause": http.StatusBadRequest, "/-/api/resume": http.StatusBadRequest,
		"/-/api/pause?name=../x": http.StatusBadRequest, "/-/api/flush": http.StatusOK,
	} {
		if status, _, body := do(t, http.MethodPost, r.base+url, auth); status != want || !json.Valid(body) {
			t.Errorf("POST %s: %d %s; want %d with JSON", url, status, body, want)
		}
	}
	for _, hdr := range [][]string{{"Origin", "https://evil.example"}, {"Sec-Fetch-Site", "cross-site"}} {
		if status, _, _ := do(t, http.MethodPost, r.base+"/-/api/pause?name=ds", auth, hdr...); status != http.StatusForbidden {
			t.Errorf("pause with %s: %s: %d; want 403", hdr[0], hdr[1], status)
		}
	}
	if r.fl.Resume("ds") {
		t.Error("a refused pause paused the datasource")
	}
	if status, _, body := do(t, http.MethodPost, r.base+"/-/api/pause?name=ds", auth, "Origin", r.base, "Sec-Fetch-Site", "same-origin"); status != http.StatusOK ||
		!strings.Contains(string(body), `"changed":true`) {
		t.Errorf("same-origin pause: %d %s; want 200, changed", status, body)
	}
}

// TestStreamsJSON: the JSON lists each datasource with its counts, and the
// page's actions act: a paused datasource stays held until resumed, and a
// flush sends what is held without waiting for the (hour-long) interval.
func TestStreamsJSON(t *testing.T) {
	r := newRig(t)
	auth := "Bearer " + token
	status := func() Status {
		t.Helper()
		code, _, body := do(t, http.MethodGet, r.base+"/-/api/streams", auth)
		var st Status
		if err := json.Unmarshal(body, &st); code != http.StatusOK || err != nil {
			t.Fatalf("streams: %d %v %s", code, err, body)
		}
		return st
	}
	stream := func(st Status, ds string) Stream {
		for _, s := range st.Streams {
			if s.Datasource == ds {
				return s
			}
		}
		return Stream{}
	}
	do(t, http.MethodPost, r.base+"/-/api/pause?name=b", auth)
	r.put(t, "a", `{"a":1}`, `{"a":2}`)
	r.put(t, "b", `{"b":1}`)
	poll.Until(t, "both streams listed", func() bool { return len(status().Streams) == 2 })
	do(t, http.MethodPost, r.base+"/-/api/flush", auth)
	poll.Until(t, "a delivered by the flush; b held, paused", func() bool {
		st := status()
		a, b := stream(st, "a"), stream(st, "b")
		return a.Delivered == 2 && a.Accepted == 2 && a.LastDelivery != nil && b.Paused && b.HeldEvents == 1 && b.Delivered == 0
	})
	do(t, http.MethodPost, r.base+"/-/api/resume?name=b", auth)
	do(t, http.MethodPost, r.base+"/-/api/flush?name=b", auth)
	poll.Until(t, "b delivered once resumed and flushed", func() bool {
		b := stream(status(), "b")
		return !b.Paused && b.Delivered == 1 && b.HeldEvents == 0
	})
	st := status()
	if st.Totals.Delivered != 3 || st.Totals.BufferMaxEvents != 1000 || st.Totals.Dropped == nil {
		t.Errorf("totals %+v; want 3 delivered and the buffer's limits", st.Totals)
	}
}

// TestHistoryIsBounded: a stream's history and the totals' hold at most
// SampleSeconds values however long the process runs, and a stream the
// flusher forgot is forgotten by the console too.
func TestHistoryIsBounded(t *testing.T) {
	r := newRig(t)
	r.put(t, "kept", `{}`)
	poll.Until(t, "the stream known", func() bool { return len(r.fl.Streams()) == 1 })
	now := time.Now()
	for i := range SampleSeconds + 50 {
		r.c.sample(now.Add(time.Duration(i) * time.Second))
	}
	st := r.c.Status("kept")
	if len(st.Samples.Accepted) != SampleSeconds || len(st.Streams) != 1 || len(st.Streams[0].Samples.Accepted) != SampleSeconds {
		t.Fatalf("history: totals %d, stream %d values; want %d each", len(st.Samples.Accepted), len(st.Streams[0].Samples.Accepted), SampleSeconds)
	}
	if all := r.c.Status(""); len(all.Streams[0].Samples.Accepted) != StreamSampleSeconds {
		t.Errorf("without ?name: %d values a stream; want the last %d", len(all.Streams[0].Samples.Accepted), StreamSampleSeconds)
	}
	// MaxStreams is 3: more streams than that are summed as "(other)",
	// so neither the flusher nor the console grows with names clients send.
	for _, ds := range []string{"s1", "s2", "s3", "s4", "s5"} {
		r.put(t, ds, `{}`)
	}
	poll.Until(t, "the overflow summed", func() bool {
		r.c.sample(time.Now())
		return len(r.c.Status("").Streams) == 4
	})
	r.c.mu.Lock()
	n := len(r.c.streams)
	r.c.mu.Unlock()
	if n > 4 {
		t.Errorf("the console keeps %d stream histories; want at most the flusher's 3 and (other)", n)
	}
}

// TestStreamsByClient: two named clients' streams of one datasource are two
// entries, each with its client's name (and the unnamed one without), with
// their own counts and their own history.
func TestStreamsByClient(t *testing.T) {
	r := newRig(t)
	put := func(client string, n int) {
		t.Helper()
		lines := make([][]byte, n)
		for i := range lines {
			lines[i] = []byte(`{"n":1}`)
		}
		if err := r.buf.Put(buffer.Key{Datasource: "page_views", Client: client}, lines); err != nil {
			t.Fatal(err)
		}
	}
	put("web", 1)
	put("api-worker", 2)
	put("", 3)
	poll.Until(t, "three streams, every event counted", func() bool {
		streams, n := r.fl.Streams(), int64(0)
		for _, s := range streams {
			n += s.Accepted
		}
		return len(streams) == 3 && n == 6
	})
	r.c.sample(time.Now()) // every stream's history starts here

	code, _, body := do(t, http.MethodGet, r.base+"/-/api/streams", "Bearer "+token)
	var st Status
	if err := json.Unmarshal(body, &st); code != http.StatusOK || err != nil {
		t.Fatalf("streams: %d %v %s", code, err, body)
	}
	accepted := map[string]int64{}
	for _, s := range st.Streams {
		if s.Datasource != "page_views" {
			t.Errorf("stream of %q", s.Datasource)
		}
		if _, dup := accepted[s.Client]; dup {
			t.Errorf("client %q listed twice", s.Client)
		}
		accepted[s.Client] = s.Accepted
	}
	if want := map[string]int64{"web": 1, "api-worker": 2, "": 3}; !maps.Equal(accepted, want) {
		t.Errorf("accepted by client %v; want %v\n%s", accepted, want, body)
	}
	// The client goes by its name, and an unnamed client's stream has none.
	if n := strings.Count(string(body), `"client":`); n != 2 || !strings.Contains(string(body), `"client":"web"`) ||
		!strings.Contains(string(body), `"client":"api-worker"`) {
		t.Errorf("%d client fields in %s; want web and api-worker only", n, body)
	}

	put("web", 4)
	poll.Until(t, "web's second batch counted", func() bool {
		for _, s := range r.fl.Streams() {
			if s.Client == "web" && s.Accepted == 5 {
				return true
			}
		}
		return false
	})
	r.c.sample(time.Now().Add(time.Second))
	last := map[string]float64{}
	for _, s := range r.c.Status("page_views").Streams {
		a := s.Samples.Accepted
		if len(a) != 2 {
			t.Fatalf("client %q: %d samples; want 2", s.Client, len(a))
		}
		last[s.Client] = a[1]
	}
	if want := map[string]float64{"web": 4, "api-worker": 0, "": 0}; !maps.Equal(last, want) {
		t.Errorf("last second's accepted by client %v; want %v: one history per client", last, want)
	}
	r.c.mu.Lock()
	n := len(r.c.streams)
	r.c.mu.Unlock()
	if n != 3 {
		t.Errorf("the console keeps %d stream histories; want 3", n)
	}
}
