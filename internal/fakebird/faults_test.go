package fakebird

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestScriptOrder(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	fb.Script(
		Response{Status: 429, Header: map[string]string{"Retry-After": "1"}},
		Response{Status: 500},
		Response{Status: 200},
	)
	url := fb.EventsURL() + "?name=events"
	body := []byte("{\"a\":1}\n{\"a\":2}")

	want := []int{429, 500, 200, 202}
	for i, w := range want {
		r := mustSend(t, c, url, body, bearer(testToken))
		if r.status != w {
			t.Fatalf("request %d: got status %d; want %d (body %s)", i, r.status, w, r.body)
		}
		if w >= 300 {
			checkErrorBody(t, r)
		} else {
			checkSuccessBody(t, r, 2)
		}
		if i == 0 && r.header.Get("Retry-After") != "1" {
			t.Errorf("Retry-After: got %q; want %q", r.header.Get("Retry-After"), "1")
		}
	}
	if n := fb.RowCount(); n != 4 {
		t.Errorf("RowCount: got %d; want 4 (only the 2xx requests)", n)
	}
	if n := fb.Scripted(); n != 0 {
		t.Errorf("Scripted: got %d; want 0", n)
	}
	reqs := fb.Requests()
	for i, r := range reqs {
		if r.Status != want[i] || len(r.Lines) != 2 {
			t.Errorf("request %d: got status %d with %d lines; want %d with 2", i, r.Status, len(r.Lines), want[i])
		}
	}
}

func TestScriptPassingResponse(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	fb.Script(
		Response{Status: 200, Header: map[string]string{"X-Test": "yes"}, Delay: 10 * time.Millisecond},
		Response{Body: `{"successful_rows":0,"quarantined_rows":1}`},
		Response{Status: 200}, // a failing check still wins
	)
	url := fb.EventsURL() + "?name=events"
	r := mustSend(t, c, url, []byte(`{"a":1}`), bearer(testToken))
	if r.status != 200 || r.header.Get("X-Test") != "yes" {
		t.Errorf("first: got %d with X-Test %q; want 200 with X-Test yes", r.status, r.header.Get("X-Test"))
	}
	r = mustSend(t, c, url, []byte(`{"a":2}`), bearer(testToken))
	if r.status != 202 || string(r.body) != `{"successful_rows":0,"quarantined_rows":1}` {
		t.Errorf("second: got %d %s; want 202 with the scripted body", r.status, r.body)
	}
	r = mustSend(t, c, url, []byte(`{"a":3}`), nil)
	if r.status != 403 {
		t.Errorf("third: got %d; want 403 for a missing token", r.status)
	}
	if got := lineStrings(fb.Rows()); !equalStrings(got, []string{`{"a":1}`, `{"a":2}`}) {
		t.Errorf("rows: got %q; want the first two requests' rows", got)
	}
}

func TestSetFaultPerDatasource(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	fb.SetFault(ForDatasource("blocked", Always(Response{Status: 403})))

	tests := []struct {
		ds   string
		want int
	}{
		{"blocked", 403},
		{"open", 202},
		{"blocked", 403},
	}
	for _, tt := range tests {
		r := mustSend(t, c, fb.EventsURL()+"?name="+tt.ds, []byte(`{"a":1}`), bearer(testToken))
		if r.status != tt.want {
			t.Errorf("%s: got %d; want %d", tt.ds, r.status, tt.want)
		}
	}
	if n, m := len(fb.RowsFor("blocked")), len(fb.RowsFor("open")); n != 0 || m != 1 {
		t.Errorf("rows: got blocked=%d open=%d; want 0 and 1", n, m)
	}
	fb.SetFault(nil)
	if r := mustSend(t, c, fb.EventsURL()+"?name=blocked", []byte(`{"a":1}`), bearer(testToken)); r.status != 202 {
		t.Errorf("after SetFault(nil): got %d; want 202", r.status)
	}
	// The script takes precedence over the fault hook.
	fb.SetFault(Always(Response{Status: 500}))
	fb.Script(Response{Status: 503})
	if r := mustSend(t, c, fb.EventsURL()+"?name=open", []byte(`{"a":1}`), bearer(testToken)); r.status != 503 {
		t.Errorf("scripted over fault: got %d; want 503", r.status)
	}
	if r := mustSend(t, c, fb.EventsURL()+"?name=open", []byte(`{"a":1}`), bearer(testToken)); r.status != 500 {
		t.Errorf("fault after script: got %d; want 500", r.status)
	}
}

func TestRateLimit(t *testing.T) {
	// One request per second: the second back-to-back request is limited
	// unless the two are more than a second apart.
	rl := RateLimit(1)
	first := rl(&Request{Datasource: "a"})
	if first == nil || !first.passes() || first.Header["X-RateLimit-Limit"] != "1" || first.Header["X-RateLimit-Remaining"] != "0" {
		t.Fatalf("first: got %+v; want a passing response with limit 1, remaining 0", first)
	}
	second := rl(&Request{Datasource: "a"})
	if second == nil || second.Status != 429 {
		t.Fatalf("second: got %+v; want 429", second)
	}
	for _, h := range []string{"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} {
		if _, err := strconv.Atoi(second.Header[h]); err != nil {
			t.Errorf("%s: got %q; want an integer", h, second.Header[h])
		}
	}
	if ra, _ := strconv.Atoi(second.Header["Retry-After"]); ra < 1 {
		t.Errorf("Retry-After: got %d; want >= 1", ra)
	}
	if other := rl(&Request{Datasource: "b"}); other == nil || !other.passes() {
		t.Errorf("other datasource: got %+v; want it to pass (limits are per datasource)", other)
	}
}

func TestRateLimitOverHTTP(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	fb.SetFault(RateLimit(1))
	url := fb.EventsURL() + "?name=events"
	if r := mustSend(t, c, url, []byte(`{"a":1}`), bearer(testToken)); r.status != 202 || r.header.Get("X-RateLimit-Limit") != "1" {
		t.Errorf("first: got %d with X-RateLimit-Limit %q; want 202 with 1", r.status, r.header.Get("X-RateLimit-Limit"))
	}
	r := mustSend(t, c, url, []byte(`{"a":1}`), bearer(testToken))
	if r.status != 429 || r.header.Get("Retry-After") == "" {
		t.Errorf("second: got %d with Retry-After %q; want 429 with Retry-After", r.status, r.header.Get("Retry-After"))
	}
	checkErrorBody(t, r)
}

func TestFailRatio(t *testing.T) {
	count := func(f func(*Request) *Response, n int) (failed int, seq string) {
		var b strings.Builder
		for range n {
			if r := f(&Request{}); r != nil {
				failed++
				b.WriteByte('x')
			} else {
				b.WriteByte('.')
			}
		}
		return failed, b.String()
	}
	if n, _ := count(FailRatio(0, 500, 1), 100); n != 0 {
		t.Errorf("ratio 0: got %d failures; want 0", n)
	}
	if n, _ := count(FailRatio(1, 500, 1), 100); n != 100 {
		t.Errorf("ratio 1: got %d failures; want 100", n)
	}
	n, seq1 := count(FailRatio(0.3, 500, 42), 1000)
	if n < 200 || n > 400 {
		t.Errorf("ratio 0.3: got %d of 1000 failures; want about 300", n)
	}
	if _, seq2 := count(FailRatio(0.3, 500, 42), 1000); seq1 != seq2 {
		t.Error("same seed: got different failure sequences; want the same")
	}
	if r := FailRatio(1, 429, 1)(&Request{}); r.Header["Retry-After"] != "1" {
		t.Errorf("429: got Retry-After %q; want %q", r.Header["Retry-After"], "1")
	}
}

func TestChain(t *testing.T) {
	f := Chain(nil, RateLimit(100), Always(Response{Status: 500}))
	r := f(&Request{Datasource: "a"})
	if r == nil || r.Status != 500 || r.Header["X-RateLimit-Limit"] != "100" {
		t.Errorf("got %+v; want 500 carrying the rate-limit headers", r)
	}
	pass := Chain(func(*Request) *Response { return nil }, Always(Response{Delay: time.Second}), Always(Response{Delay: time.Second, Status: 200}))
	if r := pass(&Request{}); r == nil || r.Status != 200 || r.Delay != 2*time.Second {
		t.Errorf("passing chain: got %+v; want status 200 and 2s delay", r)
	}
	if r := Chain()(&Request{}); r != nil {
		t.Errorf("empty chain: got %+v; want nil", r)
	}
}

func TestDownUp(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	url := fb.EventsURL() + "?name=events"
	if r := mustSend(t, c, url, []byte(`{"a":1}`), bearer(testToken)); r.status != 202 {
		t.Fatalf("before Down: got %d; want 202", r.status)
	}

	fb.Down()
	fb.Down() // no-op
	if !fb.IsDown() {
		t.Error("IsDown: got false; want true")
	}
	// The client still holds an idle keep-alive connection; it must fail too.
	if _, err := send(c, url, []byte(`{"a":2}`), bearer(testToken)); err == nil {
		t.Error("while down, pooled client: got a response; want a connection error")
	}
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	if _, err := send(fresh, url, []byte(`{"a":2}`), bearer(testToken)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("while down, new connection: got %v; want connection refused", err)
	}

	if err := fb.Up(); err != nil {
		t.Fatalf("Up: %v", err)
	}
	if err := fb.Up(); err != nil {
		t.Errorf("second Up: got %v; want nil", err)
	}
	if r := mustSend(t, c, url, []byte(`{"a":3}`), bearer(testToken)); r.status != 202 {
		t.Errorf("after Up: got %d; want 202", r.status)
	}
	if got := lineStrings(fb.Rows()); !equalStrings(got, []string{`{"a":1}`, `{"a":3}`}) {
		t.Errorf("rows: got %q; want the requests before Down and after Up", got)
	}
}

// blockingFault returns a hook that reports each call on entered and
// answers with a long delay.
func blockingFault() (func(*Request) *Response, chan struct{}) {
	entered := make(chan struct{}, 1)
	return func(*Request) *Response {
		entered <- struct{}{}
		return &Response{Delay: time.Hour}
	}, entered
}

func TestDownAbortsDelayedRequest(t *testing.T) {
	fb := NewTB(t, Options{})
	c := newClient(t)
	hook, entered := blockingFault()
	fb.SetFault(hook)
	errc := make(chan error, 1)
	go func() {
		_, err := send(c, fb.EventsURL()+"?name=events", []byte(`{"a":1}`), bearer(testToken))
		errc <- err
	}()
	<-entered
	fb.Down()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("delayed request during Down: got a response; want a connection error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("delayed request still blocked 10s after Down")
	}
	if err := fb.WaitRequests(ctxTimeout(t, 10*time.Second), 1); err != nil {
		t.Fatal(err)
	}
	if got := fb.StatusCounts(); got[0] != 1 || fb.RowCount() != 0 {
		t.Errorf("StatusCounts: got %v with %d rows; want map[0:1] and no rows", got, fb.RowCount())
	}
}

func TestCloseDoesNotWaitForDelay(t *testing.T) {
	fb := New(Options{})
	c := newClient(t)
	hook, entered := blockingFault()
	fb.SetFault(hook)
	errc := make(chan error, 1)
	go func() {
		_, err := send(c, fb.EventsURL()+"?name=events", []byte(`{"a":1}`), bearer(testToken))
		errc <- err
	}()
	<-entered
	closed := make(chan struct{})
	go func() {
		fb.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close still blocked 10s after a request started a 1h delay")
	}
	if err := <-errc; err == nil {
		t.Error("request aborted by Close: got a response; want a connection error")
	}
	if err := fb.Up(); err == nil {
		t.Error("Up after Close: got nil; want an error")
	}
}

func TestDelayRespectsClientTimeout(t *testing.T) {
	fb := NewTB(t, Options{})
	fb.Script(Response{Status: 200, Delay: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fb.EventsURL()+"?name=events", strings.NewReader(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	if resp, err := newClient(t).Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("got a response; want the client timeout")
	}
	if err := fb.WaitRequests(ctxTimeout(t, 10*time.Second), 1); err != nil {
		t.Fatal(err)
	}
	if r := fb.Requests()[0]; r.Status != 0 || fb.RowCount() != 0 {
		t.Errorf("abandoned request: got status %d with %d rows; want 0 and no rows", r.Status, fb.RowCount())
	}
}
