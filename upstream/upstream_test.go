package upstream

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	f := func(h map[string]string, want time.Duration) {
		t.Helper()
		got := RetryAfter(func(k string) string { return h[k] }, now, true)
		if got != want {
			t.Errorf("RetryAfter(%v) = %s; want %s", h, got, want)
		}
	}
	f(map[string]string{}, 0)
	f(map[string]string{"Retry-After": "3"}, 3*time.Second)
	f(map[string]string{"Retry-After": now.Add(7 * time.Second).Format(http.TimeFormat)}, 7*time.Second)
	f(map[string]string{"X-RateLimit-Reset": "2"}, 2*time.Second)
	f(map[string]string{"Retry-After": "1", "X-RateLimit-Reset": "9"}, time.Second)
	f(map[string]string{"Retry-After": "junk", "X-RateLimit-Reset": "4"}, 4*time.Second)
	f(map[string]string{"Retry-After": "999999"}, maxRetryAfter)
	f(map[string]string{"Retry-After": "-5"}, 0)
	// A 500 carries the rate-limit headers too; they do not mean "wait".
	if got := RetryAfter(func(k string) string { return map[string]string{"X-RateLimit-Reset": "9"}[k] }, now, false); got != 0 {
		t.Errorf("not rate-limited, X-RateLimit-Reset: 9: got %s; want 0 (own backoff)", got)
	}
}

func TestClassify(t *testing.T) {
	none := func(string) string { return "" }
	for status, want := range map[int]string{200: "ok", 202: "ok", 429: "retry", 500: "retry", 503: "retry", 400: "final", 403: "final", 413: "final", 422: "final"} {
		err := Classify(status, "boom", none, time.Now())
		_, retry := Retryable(err)
		got := "final"
		switch {
		case err == nil:
			got = "ok"
		case retry:
			got = "retry"
		}
		if got != want {
			t.Errorf("Classify(%d) = %s; want %s", status, got, want)
		}
		if err != nil && !strings.Contains(err.Error(), "boom") {
			t.Errorf("Classify(%d) error %q lacks the upstream message", status, err)
		}
	}
}

// TestRetryAfterSources: a 429's wait comes from Retry-After, else from
// X-RateLimit-Reset; a 5xx's only from Retry-After (its X-RateLimit-Reset
// is about a window it did not say was spent).
func TestRetryAfterSources(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		status int
		header map[string]string
		want   time.Duration
	}{
		{429, map[string]string{"Retry-After": "3", "X-RateLimit-Reset": "7"}, 3 * time.Second},
		{429, map[string]string{"X-RateLimit-Reset": "7"}, 7 * time.Second},
		{503, map[string]string{"X-RateLimit-Reset": "7"}, 0},
		{503, map[string]string{"Retry-After": "2"}, 2 * time.Second},
	} {
		err := Classify(tc.status, "", func(k string) string { return tc.header[k] }, now)
		var re *RetryableError
		if !errors.As(err, &re) || re.RetryAfter != tc.want {
			t.Errorf("%d %v: got %v; want a RetryableError waiting %s", tc.status, tc.header, err, tc.want)
		}
	}
}

// TestErrorText: a message is trimmed and cut at MaxErrorText bytes; one of
// exactly that length is kept whole, and nothing at all is named.
func TestErrorText(t *testing.T) {
	long := strings.Repeat("y", MaxErrorText+10)
	for in, want := range map[string]string{
		"  column x is missing\n": "column x is missing",
		long:                      long[:MaxErrorText] + "…",
		long[:MaxErrorText]:       long[:MaxErrorText],
		" \n":                     "(empty body)",
	} {
		if got := ErrorText(in); got != want {
			t.Errorf("ErrorText(%q) = %q; want %q", in, got, want)
		}
	}
}
