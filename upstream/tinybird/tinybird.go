// Package tinybird is the upstream for Tinybird's Events API
// (POST /v0/events): batches go as gzip'd NDJSON, and Tinybird's answers
// (its {"error": …} bodies, rate-limit headers and row counts) are read
// into the upstream package's results and errors.
package tinybird

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	json "github.com/goccy/go-json"
	"github.com/tbproxy/tbproxy/internal/endpoint"
	"github.com/tbproxy/tbproxy/upstream"
	"github.com/valyala/fasthttp"
)

// Options configure a Tinybird Events API upstream.
type Options struct {
	// BaseURL is the API host, e.g. https://api.tinybird.co, with no trailing slash.
	BaseURL string
	// Token is sent for batches whose key carries no token (proxy-token
	// mode). Batches keyed by a client's token (pass-through) use that one.
	Token string
	// Wait sends wait=true, so a 200 means the rows are written. Without it
	// Tinybird answers 202 before writing, and may still lose the rows.
	Wait bool
	// Timeout bounds each request; zero means 30s.
	Timeout time.Duration
	// MaxConns bounds open connections to the upstream; zero means 16.
	MaxConns int
	// UserAgent is sent with every request.
	UserAgent string
	// Zstd sends batches zstd-compressed instead of gzip'd
	// (UPSTREAM_ENCODING=zstd): faster, and 2-3x smaller on NDJSON, for an
	// upstream that reads Content-Encoding: zstd.
	Zstd bool
}

// Client sends batches to Tinybird's Events API as gzip'd (or zstd) NDJSON.
// It is safe for concurrent use. Create one with New.
type Client struct {
	opts     Options
	base     endpoint.Endpoint
	client   *fasthttp.Client
	encoding string
	comp     compressor
}

type compressor interface {
	Compress(dst io.Writer, b *upstream.Batch, tee io.Writer) error
}

// New returns an upstream for the Events API at opts.BaseURL.
func New(opts Options) (*Client, error) {
	base, err := endpoint.Parse(opts.BaseURL, "http", "https")
	if err != nil {
		return nil, fmt.Errorf("tinybird upstream: base URL: %w", err)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 16
	}
	encoding, comp := "gzip", compressor(new(upstream.GzipPool))
	if opts.Zstd {
		encoding, comp = "zstd", new(upstream.ZstdPool)
	}
	return &Client{
		opts:     opts,
		base:     base,
		encoding: encoding,
		comp:     comp,
		client: &fasthttp.Client{
			Name:                opts.UserAgent,
			MaxConnsPerHost:     opts.MaxConns,
			MaxConnWaitTimeout:  opts.Timeout,
			MaxIdleConnDuration: 30 * time.Second,
			// Error bodies are capped; a success body is a small JSON object.
			MaxResponseBodySize: 1 << 20,
		},
	}, nil
}

// Send posts b to /v0/events and interprets Tinybird's answer: nil once
// Tinybird acknowledged the rows, a *upstream.RetryableError for network
// errors, 429 and 5xx, a *upstream.StatusError for any other 4xx.
func (t *Client) Send(ctx context.Context, b *upstream.Batch) (upstream.Result, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	query := "name=" + url.QueryEscape(b.Key.Datasource)
	if t.opts.Wait {
		query += "&wait=true"
	}
	t.base.Point(req, []byte("/v0/events"), []byte(query))
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/x-ndjson")
	req.Header.Set(fasthttp.HeaderContentEncoding, t.encoding)
	token := b.Key.Token
	if token == "" {
		token = t.opts.Token
	}
	req.Header.Set(fasthttp.HeaderAuthorization, "Bearer "+token)
	if err := t.comp.Compress(req.BodyWriter(), b, nil); err != nil {
		return upstream.Result{}, fmt.Errorf("compress %d events: %w", b.Rows, err)
	}

	deadline := time.Now().Add(t.opts.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := t.client.DoDeadline(req, resp, deadline); err != nil {
		return upstream.Result{}, &upstream.RetryableError{Err: fmt.Errorf("post to %s: %w", t.base, err)}
	}
	status := resp.StatusCode()
	if status < 200 || status >= 300 { // a 2xx body holds counts, not an error to extract
		return upstream.Result{}, upstream.Classify(status, errorText(resp.Body()), func(k string) string { return string(resp.Header.Peek(k)) }, time.Now())
	}
	res := parseResult(resp.Body(), b.Rows)
	res.Status = status
	if remaining := strings.TrimSpace(string(resp.Header.Peek("X-RateLimit-Remaining"))); remaining == "0" {
		// The window is spent: wait for its reset rather than earn a 429.
		res.HoldFor = upstream.RetryAfter(func(k string) string {
			if k == "Retry-After" {
				return ""
			}
			return string(resp.Header.Peek(k))
		}, time.Now(), true)
	}
	return res, nil
}

// parseResult reads {"successful_rows":N,"quarantined_rows":M}. A 2xx whose
// body lacks the counts is taken as every row written: the status is the
// acknowledgement, the body only adds detail.
func parseResult(body []byte, rows int) upstream.Result {
	var r struct {
		Successful  *int `json:"successful_rows"`
		Quarantined *int `json:"quarantined_rows"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Successful == nil {
		return upstream.Result{SuccessfulRows: rows}
	}
	res := upstream.Result{SuccessfulRows: *r.Successful}
	if r.Quarantined != nil {
		res.QuarantinedRows = *r.Quarantined
	}
	return res
}

// errorText extracts a readable message from a Tinybird error body: its
// "error" field ({"error":"…"}), else the body itself, capped (see
// upstream.ErrorText).
func errorText(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	s := string(body[:min(len(body), 4*upstream.MaxErrorText)])
	if err := json.Unmarshal(body, &e); err == nil && e.Error != "" {
		s = e.Error
	}
	return upstream.ErrorText(s)
}
