package fakebird

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

const testToken = "p.test-token"

// ndjson is a body with blank lines, a trailing newline, unicode, escapes
// and odd spacing, to check that rows are recorded byte-identically.
const ndjson = "{\"a\":1}\n\n{ \"b\" : [1, 2.50, null] , \"s\":\"caf\u00e9 \\u00e9 \\\"q\\\"\"}\n   \n{\"nested\":{\"x\":{}}}\n"

var ndjsonLines = []string{
	`{"a":1}`,
	"{ \"b\" : [1, 2.50, null] , \"s\":\"caf\u00e9 \\u00e9 \\\"q\\\"\"}",
	`{"nested":{"x":{}}}`,
}

// reply is a decoded response.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// newClient returns a client with its own connection pool, so tests do not
// share keep-alive connections.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// send posts body to path+query and returns the reply or the transport error.
func send(c *http.Client, url string, body []byte, header map[string]string) (reply, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}, err
}

func mustSend(t *testing.T, c *http.Client, url string, body []byte, header map[string]string) reply {
	t.Helper()
	r, err := send(c, url, body, header)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return r
}

func bearer(tok string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + tok}
}

func gzipped(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func zstded(t *testing.T, s string) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll([]byte(s), nil)
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// checkSuccessBody requires the exact shape zod-bird validates
// (tinybird-events-api.md §5).
func checkSuccessBody(t *testing.T, r reply, wantRows int) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q; want %q", ct, "application/json")
	}
	var got map[string]any
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("success body %q: %v", r.body, err)
	}
	want := map[string]any{"successful_rows": float64(wantRows), "quarantined_rows": float64(0)}
	if len(got) != 2 || got["successful_rows"] != want["successful_rows"] || got["quarantined_rows"] != want["quarantined_rows"] {
		t.Errorf("success body: got %s; want %v", r.body, want)
	}
}

// checkErrorBody requires {"error": "<non-empty>"}.
func checkErrorBody(t *testing.T, r reply) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q; want %q", ct, "application/json")
	}
	var got struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(r.body, &got); err != nil || got.Error == "" {
		t.Errorf("error body: got %q (%v); want JSON with a non-empty \"error\"", r.body, err)
	}
}

func lineStrings(rows []Row) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = string(r.Line)
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestEventsContract(t *testing.T) {
	tests := []struct {
		name     string
		opts     Options
		method   string
		path     string // default "/v0/events?name=events"
		body     func(t *testing.T) []byte
		header   map[string]string
		want     int
		wantRows []string // recorded rows on success
	}{
		{name: "plain", body: raw(ndjson), header: bearer(testToken), want: 202, wantRows: ndjsonLines},
		{name: "gzip", body: func(t *testing.T) []byte { return gzipped(t, ndjson) },
			header: map[string]string{"Authorization": "Bearer " + testToken, "Content-Encoding": "gzip"}, want: 202, wantRows: ndjsonLines},
		{name: "zstd", body: func(t *testing.T) []byte { return zstded(t, ndjson) },
			header: map[string]string{"Authorization": "Bearer " + testToken, "Content-Encoding": "zstd"}, want: 202, wantRows: ndjsonLines},
		{name: "wait true answers 200", path: "/v0/events?name=events&wait=true", body: raw(ndjson), header: bearer(testToken), want: 200, wantRows: ndjsonLines},
		{name: "wait false answers 202", path: "/v0/events?name=events&wait=false", body: raw(`{"a":1}`), header: bearer(testToken), want: 202, wantRows: []string{`{"a":1}`}},
		{name: "no trailing newline", body: raw("{\"a\":1}\n{\"a\":2}"), header: bearer(testToken), want: 202, wantRows: []string{`{"a":1}`, `{"a":2}`}},
		{name: "CRLF kept byte-identical", body: raw("{\"a\":1}\r\n\r\n{\"a\":2}\r\n"), header: bearer(testToken), want: 202, wantRows: []string{"{\"a\":1}\r", "{\"a\":2}\r"}},
		{name: "token in query and unknown params", path: "/v0/events?name=events&token=" + testToken + "&format=ndjson&mode=append&from=ts-sdk",
			body: raw(`{"a":1}`), want: 202, wantRows: []string{`{"a":1}`}},
		{name: "configured token accepted", opts: Options{Tokens: []string{"t1", testToken}}, body: raw(`{"a":1}`), header: bearer(testToken), want: 202, wantRows: []string{`{"a":1}`}},
		{name: "bad token", opts: Options{Tokens: []string{"t1"}}, body: raw(`{"a":1}`), header: bearer("wrong"), want: 403},
		{name: "missing token", body: raw(`{"a":1}`), want: 403},
		{name: "missing name", path: "/v0/events", body: raw(`{"a":1}`), header: bearer(testToken), want: 400},
		{name: "invalid name", path: "/v0/events?name=1bad-name", body: raw(`{"a":1}`), header: bearer(testToken), want: 400},
		{name: "invalid line", body: raw("{\"a\":1}\n{\"a\":\n{\"a\":3}\n"), header: bearer(testToken), want: 400},
		{name: "line not an object", body: raw("{\"a\":1}\n[1,2]\n"), header: bearer(testToken), want: 400},
		{name: "corrupt gzip", body: raw("not gzip at all"), header: map[string]string{"Authorization": "Bearer " + testToken, "Content-Encoding": "gzip"}, want: 400},
		{name: "unsupported encoding", body: raw(`{"a":1}`), header: map[string]string{"Authorization": "Bearer " + testToken, "Content-Encoding": "br"}, want: 415},
		{name: "MaxBodyBytes", opts: Options{MaxBodyBytes: 10}, body: raw("{\"a\":1}\n{\"a\":2}\n"), header: bearer(testToken), want: 413},
		{name: "MaxBodyBytes counts decoded bytes", opts: Options{MaxBodyBytes: 20},
			body:   func(t *testing.T) []byte { return gzipped(t, strings.Repeat(`{"a":1}`+"\n", 10)) },
			header: map[string]string{"Authorization": "Bearer " + testToken, "Content-Encoding": "gzip"}, want: 413},
		{name: "MaxReadBytes", opts: Options{MaxReadBytes: 10}, body: raw("{\"a\":1}\n{\"a\":2}\n"), header: bearer(testToken), want: 413},
		{name: "unknown path", path: "/v0/pipes/x.json", body: raw(""), header: bearer(testToken), want: 404},
		{name: "wrong method", method: http.MethodGet, body: raw(""), header: bearer(testToken), want: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb := NewTB(t, tt.opts)
			c := newClient(t)
			path := tt.path
			if path == "" {
				path = "/v0/events?name=events"
			}
			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			req, err := http.NewRequest(method, fb.URL()+path, bytes.NewReader(tt.body(t)))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			r := reply{resp.StatusCode, resp.Header, b}
			if r.status != tt.want {
				t.Fatalf("status: got %d; want %d (body %s)", r.status, tt.want, r.body)
			}
			if tt.want/100 == 2 {
				checkSuccessBody(t, r, len(tt.wantRows))
			} else {
				checkErrorBody(t, r)
			}
			if got := lineStrings(fb.Rows()); !equalStrings(got, tt.wantRows) {
				t.Errorf("rows: got %q; want %q", got, tt.wantRows)
			}
			if got := fb.RowCount(); got != len(tt.wantRows) {
				t.Errorf("RowCount: got %d; want %d", got, len(tt.wantRows))
			}
			if strings.HasPrefix(path, "/v0/events") && method == http.MethodPost {
				reqs := fb.Requests()
				if len(reqs) != 1 || reqs[0].Status != tt.want {
					t.Fatalf("Requests: got %+v; want one with status %d", reqs, tt.want)
				}
				if got := fb.StatusCounts(); got[tt.want] != 1 || len(got) != 1 {
					t.Errorf("StatusCounts: got %v; want map[%d:1]", got, tt.want)
				}
			} else if n := fb.RequestCount(); n != 0 {
				t.Errorf("RequestCount: got %d; want 0 for a non-events request", n)
			}
		})
	}
}

func raw(s string) func(*testing.T) []byte {
	return func(*testing.T) []byte { return []byte(s) }
}

func TestRequestRecord(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	body := gzipped(t, ndjson)
	mustSend(t, c, fb.EventsURL()+"?name=ds_1&wait=true&from=test", body,
		map[string]string{"Authorization": "Bearer " + testToken, "Content-Encoding": "gzip", "X-Custom": "v"})

	reqs := fb.Requests()
	if len(reqs) != 1 {
		t.Fatalf("Requests: got %d; want 1", len(reqs))
	}
	r := reqs[0]
	checks := []struct{ name, got, want string }{
		{"Datasource", r.Datasource, "ds_1"},
		{"Token", r.Token, testToken},
		{"Encoding", r.Encoding, "gzip"},
		{"Query from", r.Query.Get("from"), "test"},
		{"Header X-Custom", r.Header.Get("X-Custom"), "v"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %q; want %q", c.name, c.got, c.want)
		}
	}
	if r.Status != 200 || r.WireBytes != int64(len(body)) || r.BodyBytes != int64(len(ndjson)) || r.Time.IsZero() {
		t.Errorf("Status/WireBytes/BodyBytes/Time: got %d/%d/%d/%v; want 200/%d/%d/non-zero",
			r.Status, r.WireBytes, r.BodyBytes, r.Time, len(body), len(ndjson))
	}
	var lines []string
	for _, l := range r.Lines {
		lines = append(lines, string(l))
	}
	if !equalStrings(lines, ndjsonLines) {
		t.Errorf("Lines: got %q; want %q", lines, ndjsonLines)
	}
	// Copies are owned by the caller.
	r.Lines[0][0] = 'X'
	rows := fb.RowsFor("ds_1")
	rows[1].Line[0] = 'X'
	if got := string(fb.Requests()[0].Lines[0]); got != ndjsonLines[0] {
		t.Errorf("Requests is not a copy: got %q; want %q", got, ndjsonLines[0])
	}
	if got := lineStrings(fb.RowsFor("ds_1")); !equalStrings(got, ndjsonLines) {
		t.Errorf("RowsFor is not a copy: got %q; want %q", got, ndjsonLines)
	}
	if rows[0].Token != testToken || rows[0].Datasource != "ds_1" {
		t.Errorf("row: got %+v; want datasource ds_1 and the token", rows[0])
	}
}

func TestInvalidLineRecordsNothing(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	r := mustSend(t, c, fb.EventsURL()+"?name=events", []byte("{\"ok\":1}\nnot json\n"), bearer(testToken))
	if r.status != 400 {
		t.Fatalf("status: got %d; want 400", r.status)
	}
	if !bytes.Contains(r.body, []byte("line 2")) {
		t.Errorf("error body: got %s; want it to name line 2", r.body)
	}
	if n := fb.RowCount(); n != 0 {
		t.Errorf("RowCount: got %d; want 0", n)
	}
	if reqs := fb.Requests(); len(reqs) != 1 || len(reqs[0].Lines) != 2 {
		t.Errorf("Requests: got %+v; want one request carrying its 2 lines", reqs)
	}
}

func TestNoValidate(t *testing.T) {
	fb := NewTB(t, Options{NoValidate: true})
	c := newClient(t)
	r := mustSend(t, c, fb.EventsURL()+"?name=events", []byte("not json\n\n{\"a\":1}\n[]"), bearer(testToken))
	if r.status != 202 {
		t.Fatalf("status: got %d; want 202 (body %s)", r.status, r.body)
	}
	checkSuccessBody(t, r, 3)
	if got := fb.RowCountFor("events"); got != 3 {
		t.Errorf("RowCountFor: got %d; want 3", got)
	}
	if rows := fb.Rows(); len(rows) != 0 {
		t.Errorf("Rows: got %d; want none retained with NoValidate", len(rows))
	}
}

func TestWaitRows(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	mustSend(t, c, fb.EventsURL()+"?name=events", []byte("{\"a\":1}\n{\"a\":2}"), bearer(testToken))

	if err := fb.WaitRows(ctxTimeout(t, 5*time.Second), 2); err != nil {
		t.Fatalf("WaitRows(2): %v", err)
	}
	err := fb.WaitRows(ctxTimeout(t, 50*time.Millisecond), 5)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "saw 2 rows") {
		t.Errorf("WaitRows(5): got %v; want a deadline error saying it saw 2 rows", err)
	}
}

func TestWaitRowsWakesOnRecord(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	errc := make(chan error, 1)
	go func() { errc <- fb.WaitRows(ctxTimeout(t, 10*time.Second), 3) }()
	go func() { errc <- fb.WaitRequests(ctxTimeout(t, 10*time.Second), 2) }()
	mustSend(t, c, fb.EventsURL()+"?name=a", []byte(`{"a":1}`), bearer(testToken))
	mustSend(t, c, fb.EventsURL()+"?name=b", []byte("{\"a\":2}\n{\"a\":3}"), bearer(testToken))
	for range 2 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	select {
	case <-fb.Changed():
	case <-time.After(5 * time.Second):
		t.Error("Changed: no kick after two recorded requests")
	}
}

func TestWaitEndsOnClose(t *testing.T) {
	fb := New(Options{})
	errc := make(chan error, 1)
	go func() { errc <- fb.WaitRequests(context.Background(), 1) }()
	fb.Close()
	fb.Close() // idempotent
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("WaitRequests after Close: got %v; want a server closed error", err)
	}
}

func TestMaxRequests(t *testing.T) {
	fb := NewTB(t, Options{MaxRequests: 2})
	c := newClient(t)
	for _, ds := range []string{"a", "b", "c", "d", "e"} {
		mustSend(t, c, fb.EventsURL()+"?name="+ds, []byte(`{"a":1}`), bearer(testToken))
	}
	reqs := fb.Requests()
	if len(reqs) != 2 || reqs[0].Datasource != "d" || reqs[1].Datasource != "e" {
		t.Errorf("Requests: got %d records; want the last two (d, e)", len(reqs))
	}
	if n := fb.RequestCount(); n != 5 {
		t.Errorf("RequestCount: got %d; want 5", n)
	}
	if n := fb.RowCount(); n != 5 {
		t.Errorf("RowCount: got %d; want 5", n)
	}
	fb.Reset()
	if n, rows := fb.RequestCount(), fb.Rows(); n != 0 || len(rows) != 0 {
		t.Errorf("after Reset: got %d requests, %d rows; want none", n, len(rows))
	}
}

func TestStartError(t *testing.T) {
	fb := NewTB(t, Options{})
	addr := strings.TrimPrefix(fb.URL(), "http://")
	if _, err := Start(Options{Addr: addr}); err == nil {
		t.Errorf("Start on a busy address %s: got nil error; want one", addr)
	}
}
