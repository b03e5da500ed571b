package tinybird

import (
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/upstream"
)

// TestTinybirdDefaults: a timeout and connection count an operator sets
// are used as given; unset ones get the documented defaults.
func TestTinybirdDefaults(t *testing.T) {
	for _, tc := range []struct {
		in, want Options
	}{
		{Options{}, Options{Timeout: 30 * time.Second, MaxConns: 16}},
		{Options{Timeout: 2 * time.Second, MaxConns: 3}, Options{Timeout: 2 * time.Second, MaxConns: 3}},
	} {
		tc.in.BaseURL = "http://127.0.0.1:1"
		up, err := New(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if up.opts.Timeout != tc.want.Timeout || up.client.MaxConnsPerHost != tc.want.MaxConns || up.client.MaxConnWaitTimeout != tc.want.Timeout {
			t.Errorf("%+v: timeout %s, %d connections; want %s, %d", tc.in, up.opts.Timeout, up.client.MaxConnsPerHost, tc.want.Timeout, tc.want.MaxConns)
		}
	}
}

// TestErrorText: the message of a Tinybird error is its JSON "error"
// field; any other body is the message itself, capped.
func TestErrorText(t *testing.T) {
	long := strings.Repeat("y", upstream.MaxErrorText+10)
	for body, want := range map[string]string{
		`{"error":"boom"}`:                  "boom",
		`{"error":" column x is missing "}`: "column x is missing",
		`{"error":""}`:                      `{"error":""}`,
		`{"detail":"other"}`:                `{"detail":"other"}`,
		"<html>bad gateway</html>\n":        "<html>bad gateway</html>",
		"":                                  "(empty body)",
		long:                                long[:upstream.MaxErrorText] + "…",
		`{"error":"` + long + `"}`:          long[:upstream.MaxErrorText] + "…",
		strings.Repeat("z", 5*upstream.MaxErrorText): strings.Repeat("z", upstream.MaxErrorText) + "…",
	} {
		if got := errorText([]byte(body)); got != want {
			t.Errorf("errorText(%.40q) = %.40q; want %.40q", body, got, want)
		}
	}
}

// TestParseResult: a 2xx's body counts the rows written and quarantined;
// a body without the counts means every row was written.
func TestParseResult(t *testing.T) {
	for body, want := range map[string]upstream.Result{
		`{"successful_rows":7,"quarantined_rows":3}`: {SuccessfulRows: 7, QuarantinedRows: 3},
		`{"successful_rows":10}`:                     {SuccessfulRows: 10},
		`{"quarantined_rows":3}`:                     {SuccessfulRows: 10},
		``:                                           {SuccessfulRows: 10},
		`not json`:                                   {SuccessfulRows: 10},
	} {
		if got := parseResult([]byte(body), 10); got != want {
			t.Errorf("parseResult(%q) = %+v; want %+v", body, got, want)
		}
	}
}
