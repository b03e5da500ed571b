// Package upstream is the seam between the flusher and the places batches
// go: what an upstream is given (Batch), what it answers (Result, or a
// *RetryableError or *StatusError), the HTTP rules Tinybird's Events API and
// any HTTP proxy share (Classify, RetryAfter), and the pooled gzip writer
// the HTTP upstreams compress with. The upstreams themselves are its
// subpackages: tinybird, clickhouse and filesink.
package upstream

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Result is what an upstream said about an acknowledged batch.
type Result struct {
	// Status is the HTTP status of the acknowledgement; 0 for upstreams
	// that are not HTTP.
	Status          int
	SuccessfulRows  int
	QuarantinedRows int
	// HoldFor, when positive, is how long upstream asked for no more sends
	// to this datasource (X-RateLimit-Remaining: 0 until X-RateLimit-Reset).
	HoldFor time.Duration
}

// RetryableError is a failed send that may succeed later: a network error,
// a timeout, a 429 or a 5xx. RetryAfter, when positive, is how long the
// upstream asked us to wait (Retry-After or X-RateLimit-Reset) and overrides
// the flusher's own backoff.
type RetryableError struct {
	Err        error
	Status     int // 0 for transport errors
	RetryAfter time.Duration
	// MaxAttempts, when positive, bounds the attempts at a batch that keeps
	// failing this way: a failure whose cause is not known to pass (an
	// unknown ClickHouse error code) is dropped after them, rather than
	// retried forever while its datasource stalls behind it.
	MaxAttempts int
	// Public, when set, is what a waiting client is told if the batch is
	// dropped; Err's text may quote rows and goes to logs and dead letters.
	Public string
}

func (e *RetryableError) Error() string { return e.Err.Error() }
func (e *RetryableError) Unwrap() error { return e.Err }

// StatusError is an upstream's refusal that retrying cannot fix (a 4xx other
// than 429). Message is the upstream's error text, capped in length.
type StatusError struct {
	Status  int
	Message string
	// Detail, when set, is the whole error text for logs and dead letters,
	// which may quote rows; clients are told Message.
	Detail string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("upstream answered %d: %s", e.Status, cmp.Or(e.Detail, e.Message))
}

// Retryable reports whether err is worth another attempt, and how long the
// upstream asked us to wait first: true when err wraps a *RetryableError.
func Retryable(err error) (time.Duration, bool) {
	var re *RetryableError
	if errors.As(err, &re) {
		return re.RetryAfter, true
	}
	return 0, false
}

// Classify turns an HTTP status into nil, a *RetryableError or a
// *StatusError; text is the upstream's error message, already extracted
// from the body (see ErrorText). Per Tinybird's Events API reference, 429
// and 5xx are retried and every other 4xx is final; 422 means a partial
// write, so it is never retried (a retry would duplicate rows). header reads
// the answer's headers, for Retry-After.
func Classify(status int, text string, header func(string) string, now time.Time) error {
	switch {
	case status >= 200 && status < 300:
		return nil
	case status == http.StatusTooManyRequests || status >= 500:
		return &RetryableError{
			Err:        fmt.Errorf("upstream answered %d: %s", status, text),
			Status:     status,
			RetryAfter: RetryAfter(header, now, status == http.StatusTooManyRequests),
		}
	default:
		return &StatusError{Status: status, Message: text}
	}
}

// maxRetryAfter caps how long an upstream may ask us to wait, so a broken
// header cannot park a batch for a day.
const maxRetryAfter = 5 * time.Minute

// RetryAfter reads Retry-After (seconds or an HTTP date) and, when
// rateLimited, falls back to X-RateLimit-Reset (seconds), as Tinybird's docs
// describe both. Tinybird sends the rate-limit headers with every answer, so
// the reset only means "wait" for a 429 (or a spent window), not for a 500.
// It returns 0 when nothing usable applies, and never more than 5 minutes.
func RetryAfter(header func(string) string, now time.Time, rateLimited bool) time.Duration {
	var d time.Duration
	if v := strings.TrimSpace(header("Retry-After")); v != "" {
		if secs, err := strconv.Atoi(v); err == nil {
			d = time.Duration(secs) * time.Second
		} else if t, err := http.ParseTime(v); err == nil {
			d = t.Sub(now)
		}
	}
	if d <= 0 && rateLimited {
		if v := strings.TrimSpace(header("X-RateLimit-Reset")); v != "" {
			if secs, err := strconv.ParseFloat(v, 64); err == nil {
				d = time.Duration(secs * float64(time.Second))
			}
		}
	}
	return min(max(d, 0), maxRetryAfter)
}

// MaxErrorText caps how much of an upstream's error body reaches logs,
// dead letters and clients. Upstreams read at most 4*MaxErrorText bytes of
// a body to find the message in it.
const MaxErrorText = 512

// ErrorText makes an extracted error message fit to pass on: trimmed, cut
// after MaxErrorText bytes (marked with "…"), and "(empty body)" when
// nothing is left.
func ErrorText(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > MaxErrorText {
		s = s[:MaxErrorText] + "…"
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}
