package flusher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	json "github.com/goccy/go-json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Upstream delivers batches somewhere: Tinybird's Events API ([Tinybird]),
// a ClickHouse server ([ClickHouse]), or a local directory ([FileSink]). Send returns nil only when the upstream acknowledged the batch.
// A failure worth retrying is reported as an error wrapping a
// *RetryableError; any other error means retrying cannot help and the batch
// is dropped. Send must honour ctx's deadline and must not keep b after it
// returns. Implementations are safe for concurrent use.
type Upstream interface {
	Send(ctx context.Context, b *Batch) (Result, error)
}

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

// classify turns an HTTP status and body into nil, a *RetryableError or a
// *StatusError. Per Tinybird's Events API reference, 429 and 5xx are retried
// and every other 4xx is final; 422 means a partial write, so it is never
// retried (a retry would duplicate rows).
func classify(status int, body []byte, header func(string) string, now time.Time) error {
	switch {
	case status >= 200 && status < 300:
		return nil
	case status == http.StatusTooManyRequests || status >= 500:
		return &RetryableError{
			Err:        fmt.Errorf("upstream answered %d: %s", status, errorText(body)),
			Status:     status,
			RetryAfter: retryAfter(header, now, status == http.StatusTooManyRequests),
		}
	default:
		return &StatusError{Status: status, Message: errorText(body)}
	}
}

// maxRetryAfter caps how long an upstream may ask us to wait, so a broken
// header cannot park a batch for a day.
const maxRetryAfter = 5 * time.Minute

// retryAfter reads Retry-After (seconds or an HTTP date) and, when
// rateLimited, falls back to X-RateLimit-Reset (seconds), as Tinybird's docs
// describe both. Tinybird sends the rate-limit headers with every answer, so
// the reset only means "wait" for a 429 (or a spent window), not for a 500.
// It returns 0 when nothing usable applies.
func retryAfter(header func(string) string, now time.Time, rateLimited bool) time.Duration {
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

// maxErrorText caps how much of an upstream's error body reaches logs and
// metrics-adjacent text.
const maxErrorText = 512

// errorText extracts a readable message from an upstream error body: the
// "error" field of a Tinybird JSON error, else the body itself, capped.
func errorText(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	s := string(body[:min(len(body), 4*maxErrorText)])
	if err := json.Unmarshal(body, &e); err == nil && e.Error != "" {
		s = e.Error
	}
	s = strings.TrimSpace(s)
	if len(s) > maxErrorText {
		s = s[:maxErrorText] + "…"
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}

// isRetryable reports whether err is worth another attempt, and how long the
// upstream asked us to wait first.
func isRetryable(err error) (time.Duration, bool) {
	var re *RetryableError
	if errors.As(err, &re) {
		return re.RetryAfter, true
	}
	return 0, false
}
