package tinybird

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/upstream"
)

const proxyToken = "proxy-token"

// newClient returns a client of the Events API at baseURL that sends
// proxyToken for batches keyed by no token.
func newClient(t *testing.T, baseURL string, wait bool, timeout time.Duration) *Client {
	t.Helper()
	c, err := New(Options{BaseURL: baseURL, Token: proxyToken, Wait: wait, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// batchOf returns a batch of lines for k, each line in its own part.
func batchOf(k buffer.Key, lines ...string) *upstream.Batch {
	b := &upstream.Batch{Key: k, Rows: len(lines)}
	for _, l := range lines {
		b.Parts = append(b.Parts, []byte(l+"\n"))
		b.Bytes += len(l) + 1
	}
	return b
}

var testLines = []string{`{"i":1,"s":"Zürich 東京 🚀"}`, `{"big":12345678901234567890123}`, `{"i":3}`}

// TestSendRequest: a batch goes to POST /v0/events?name=<datasource> as
// gzip'd NDJSON, byte-identical, with wait=true when Wait is set, under the
// proxy's token when its key has none and under the client's when it has
// one (pass-through). Without wait=true Tinybird's 202 is the
// acknowledgement.
func TestSendRequest(t *testing.T) {
	for _, tc := range []struct {
		name       string
		wait       bool
		key        buffer.Key
		wantToken  string
		wantWait   string
		wantStatus int
		zstd       bool
	}{
		{"proxy token", true, buffer.Key{Datasource: "events"}, proxyToken, "true", 200, false},
		{"pass-through token", true, buffer.Key{Token: "client-token", Datasource: "page_views"}, "client-token", "true", 200, false},
		{"no wait", false, buffer.Key{Datasource: "events"}, proxyToken, "", 202, false},
		{"zstd", true, buffer.Key{Datasource: "events"}, proxyToken, "true", 200, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{proxyToken, "client-token"}})
			c, err := New(Options{BaseURL: fb.URL(), Token: proxyToken, Wait: tc.wait, Timeout: 5 * time.Second, Zstd: tc.zstd})
			if err != nil {
				t.Fatal(err)
			}
			wantEncoding := map[bool]string{false: "gzip", true: "zstd"}[tc.zstd]
			res, err := c.Send(context.Background(), batchOf(tc.key, testLines...))
			if want := (upstream.Result{Status: tc.wantStatus, SuccessfulRows: 3}); err != nil || res != want {
				t.Fatalf("Send: %+v, %v; want %+v", res, err, want)
			}
			reqs := fb.Requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests; want 1", len(reqs))
			}
			r := reqs[0]
			if r.Datasource != tc.key.Datasource || r.Token != tc.wantToken || r.Query.Get("wait") != tc.wantWait {
				t.Errorf("name %q, token %q, wait %q; want %q, %q, %q",
					r.Datasource, r.Token, r.Query.Get("wait"), tc.key.Datasource, tc.wantToken, tc.wantWait)
			}
			if ct := r.Header.Get("Content-Type"); r.Encoding != wantEncoding || ct != "application/x-ndjson" {
				t.Errorf("Content-Encoding %q, Content-Type %q; want %s, application/x-ndjson", r.Encoding, ct, wantEncoding)
			}
			var got []string
			for _, l := range r.Lines {
				got = append(got, string(l))
			}
			if strings.Join(got, "\n") != strings.Join(testLines, "\n") {
				t.Errorf("lines %q; want %q, byte-identical", got, testLines)
			}
		})
	}
}

// TestSendAnswers: what each of Tinybird's answers means to the flusher. A
// 2xx is a Result with the body's counts, and X-RateLimit-Remaining: 0 makes
// it hold the datasource until X-RateLimit-Reset; 429 and 5xx are a
// *upstream.RetryableError (a 429 waits for Retry-After, else
// X-RateLimit-Reset; a 5xx only for Retry-After); every other 4xx is a
// *upstream.StatusError whose message is the body's "error".
func TestSendAnswers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  fakebird.Options
		resp  *fakebird.Response // scripted; nil: fakebird's own answer
		want  upstream.Result
		retry *upstream.RetryableError // compared without Err
		final *upstream.StatusError
	}{
		{name: "200 with counts", resp: &fakebird.Response{Status: 200, Body: `{"successful_rows":1,"quarantined_rows":1}`},
			want: upstream.Result{Status: 200, SuccessfulRows: 1, QuarantinedRows: 1}},
		{name: "200 without counts", resp: &fakebird.Response{Status: 200, Body: `{}`},
			want: upstream.Result{Status: 200, SuccessfulRows: 3}},
		{name: "window spent", resp: &fakebird.Response{Header: map[string]string{
			"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2", "Retry-After": "7"}},
			want: upstream.Result{Status: 200, SuccessfulRows: 3, HoldFor: 2 * time.Second}},
		{name: "window not spent", resp: &fakebird.Response{Header: map[string]string{
			"X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "2"}},
			want: upstream.Result{Status: 200, SuccessfulRows: 3}},
		{name: "429 Retry-After", resp: &fakebird.Response{Status: 429, Header: map[string]string{"Retry-After": "1", "X-RateLimit-Reset": "5"}},
			retry: &upstream.RetryableError{Status: 429, RetryAfter: time.Second}},
		{name: "429 X-RateLimit-Reset", resp: &fakebird.Response{Status: 429, Header: map[string]string{"X-RateLimit-Reset": "2"}},
			retry: &upstream.RetryableError{Status: 429, RetryAfter: 2 * time.Second}},
		{name: "500", resp: &fakebird.Response{Status: 500, Header: map[string]string{"X-RateLimit-Reset": "9"}},
			retry: &upstream.RetryableError{Status: 500}},
		{name: "503 Retry-After", resp: &fakebird.Response{Status: 503, Header: map[string]string{"Retry-After": "2"}},
			retry: &upstream.RetryableError{Status: 503, RetryAfter: 2 * time.Second}},
		{name: "400", resp: &fakebird.Response{Status: 400, Body: `{"error":"column x is missing","documentation":"https://www.tinybird.co/docs"}`},
			final: &upstream.StatusError{Status: 400, Message: "column x is missing"}},
		{name: "422", resp: &fakebird.Response{Status: 422},
			final: &upstream.StatusError{Status: 422, Message: "The ingestion has been partially completed due to an error in a Materialized View"}},
		{name: "413 scripted", resp: &fakebird.Response{Status: 413},
			final: &upstream.StatusError{Status: 413, Message: "Request Entity Too Large"}},
		{name: "413 over the body limit", opts: fakebird.Options{MaxBodyBytes: 16},
			final: &upstream.StatusError{Status: 413, Message: fmt.Sprintf(
				"Request Entity Too Large: body of %d bytes exceeds the limit of 16 bytes", len(strings.Join(testLines, "\n"))+1)}},
		{name: "403 unknown token", opts: fakebird.Options{Tokens: []string{"another"}},
			final: &upstream.StatusError{Status: 403, Message: "Invalid token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := fakebird.NewTB(t, tc.opts)
			if tc.resp != nil {
				fb.Script(*tc.resp)
			}
			res, err := newClient(t, fb.URL(), true, 5*time.Second).Send(context.Background(), batchOf(buffer.Key{Datasource: "ds"}, testLines...))
			var re *upstream.RetryableError
			var se *upstream.StatusError
			switch {
			case tc.retry != nil:
				if !errors.As(err, &re) || re.Status != tc.retry.Status || re.RetryAfter != tc.retry.RetryAfter ||
					re.MaxAttempts != 0 || re.Public != "" {
					t.Errorf("Send: %+v, %v; want a RetryableError %+v", res, err, *tc.retry)
				}
			case tc.final != nil:
				if !errors.As(err, &se) || *se != *tc.final {
					t.Errorf("Send: %+v, %v; want a StatusError %+v", res, err, *tc.final)
				}
				if _, retry := upstream.Retryable(err); retry {
					t.Errorf("Send: %v is retryable; want final", err)
				}
			case err != nil || res != tc.want:
				t.Errorf("Send: %+v, %v; want %+v", res, err, tc.want)
			}
		})
	}
}

// TestSendRateLimit: against Tinybird's per-datasource limit (fakebird's
// RateLimit, one request a second), the answer that spends the window says
// to hold the datasource until it resets (the flusher's TestRateLimitHold
// scripts this hold). What a request that comes anyway earns, a 429 with
// Retry-After, is TestSendAnswers' "429 Retry-After".
func TestSendRateLimit(t *testing.T) {
	fb := fakebird.NewTB(t, fakebird.Options{})
	fb.SetFault(fakebird.RateLimit(1))
	res, err := newClient(t, fb.URL(), true, 5*time.Second).Send(context.Background(), batchOf(buffer.Key{Datasource: "ds"}, testLines...))
	if want := (upstream.Result{Status: 200, SuccessfulRows: 3, HoldFor: time.Second}); err != nil || res != want {
		t.Fatalf("Send: %+v, %v; want %+v", res, err, want)
	}
}

// TestSendNetworkError: a connection that fails is worth retrying, and its
// error does not carry the token.
func TestSendNetworkError(t *testing.T) {
	fb := fakebird.NewTB(t, fakebird.Options{})
	url := fb.URL()
	fb.Close()
	_, err := newClient(t, url, true, 5*time.Second).Send(context.Background(), batchOf(buffer.Key{Datasource: "ds"}, testLines...))
	var re *upstream.RetryableError
	if !errors.As(err, &re) || re.Status != 0 {
		t.Fatalf("Send to a closed server: %v; want a RetryableError without a status", err)
	}
	if strings.Contains(err.Error(), proxyToken) {
		t.Errorf("error %q carries the token", err)
	}
}

// TestSendGivesUp: an answer that does not come ends the attempt at ctx's
// deadline or at Timeout, whichever is first, as a retryable error.
func TestSendGivesUp(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline time.Duration // on ctx; 0: none
		timeout  time.Duration
	}{
		{"ctx deadline", 200 * time.Millisecond, 30 * time.Second},
		{"timeout", 0, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := fakebird.NewTB(t, fakebird.Options{})
			// Far longer than the test waits for Send below.
			fb.SetFault(fakebird.Always(fakebird.Response{Delay: time.Minute}))
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			c := newClient(t, fb.URL(), true, tc.timeout)
			done := make(chan error, 1)
			go func() {
				_, err := c.Send(ctx, batchOf(buffer.Key{Datasource: "ds"}, testLines...))
				done <- err
			}()
			select {
			case err := <-done:
				if _, retry := upstream.Retryable(err); !retry {
					t.Errorf("Send: %v; want a retryable error", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Send outlived its deadline")
			}
		})
	}
}
