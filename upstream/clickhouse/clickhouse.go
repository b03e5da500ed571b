// Package clickhouse is the upstream for a ClickHouse server: each batch
// is one INSERT … FORMAT JSONEachRow over the server's HTTP interface, and
// the server's exception codes are read into the upstream package's
// results and errors (see errors.go).
package clickhouse

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	json "github.com/goccy/go-json"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tbproxy/tbproxy/internal/clock"
	"github.com/tbproxy/tbproxy/internal/endpoint"
	"github.com/tbproxy/tbproxy/upstream"
	"github.com/valyala/fasthttp"
)

// Options configure a ClickHouse upstream, reached over the server's HTTP
// interface (https://clickhouse.com/docs/en/interfaces/http).
type Options struct {
	// Addr is the host:port of the HTTP interface, e.g. 127.0.0.1:8123.
	Addr string
	// TLS selects https (clickhouses://).
	TLS bool
	// User authenticates every request; empty means "default".
	User string
	// Password goes with User in an Authorization header, never in a URL,
	// an error or a log line.
	Password string
	// Database holds one table per datasource.
	Database string
	// AllowErrorsRatio is the fraction of a batch's rows ClickHouse may skip
	// as unparsable (counted as quarantined); 0 refuses a batch with any.
	AllowErrorsRatio float64
	// Timeout bounds each request; zero means 30s.
	Timeout time.Duration
	// MaxConns bounds open connections to the server; zero means 16.
	MaxConns int
	// UserAgent is sent with every request.
	UserAgent string
	// Log receives a line when the server's features are detected and a
	// warning when skipped rows cannot be counted; nil discards them.
	Log *slog.Logger
}

// Client inserts each batch into the table named after its datasource
// with one INSERT … FORMAT JSONEachRow over HTTP, the batch's NDJSON sent
// byte-identical in a gzip body. It is safe for concurrent use. Create one
// with New.
//
// The server's features are detected on the first send (and again after it
// refuses a setting, e.g. after a downgrade): insert_deduplication_token
// (ClickHouse 22.2+), date_time_input_format and input_format_parallel_parsing
// are sent only where system.settings lists them, so 18.16 works as well as
// current releases.
type Client struct {
	opts   Options
	client *fasthttp.Client
	base   endpoint.Endpoint // scheme://addr, no credentials: safe for errors and logs
	auth   string            // the Authorization header's value
	gz     upstream.GzipPool

	mu   sync.Mutex      // protects feat; held while detecting, so one detection runs at a time
	feat *serverFeatures // nil until detected
	sawS atomic.Bool     // a response carried X-ClickHouse-Summary
	warn atomic.Bool     // the "cannot count skipped rows" warning was logged
	lost sync.Map        // token → struct{}: batches an earlier attempt may have written
}

// serverFeatures is what the server supports, from system.settings.
type serverFeatures struct {
	version         string
	dedupToken      bool // insert_deduplication_token
	bestEffort      bool // date_time_input_format
	parallelParsing bool // input_format_parallel_parsing
}

// defaultMaxInsertBlockSize is ClickHouse's max_insert_block_size default
// (1,048,576 rows in 18.16 and since). A batch above it is sent with the
// setting raised so the insert stays one block: all or nothing.
const defaultMaxInsertBlockSize = 1 << 20

// New returns an upstream for the server at opts.Addr.
func New(opts Options) (*Client, error) {
	if opts.Addr == "" || opts.Database == "" {
		return nil, errors.New("clickhouse upstream: address and database are required")
	}
	if opts.AllowErrorsRatio < 0 || opts.AllowErrorsRatio > 1 {
		return nil, fmt.Errorf("clickhouse upstream: allowed errors ratio %g is not between 0 and 1", opts.AllowErrorsRatio)
	}
	if opts.User == "" {
		opts.User = "default"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 16
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	scheme := "http"
	if opts.TLS {
		scheme = "https"
	}
	base, err := endpoint.Parse(scheme+"://"+opts.Addr, scheme)
	if err != nil {
		return nil, fmt.Errorf("clickhouse upstream: address: %w", err)
	}
	return &Client{
		opts: opts,
		base: base,
		client: &fasthttp.Client{
			Name:               opts.UserAgent,
			MaxConnsPerHost:    opts.MaxConns,
			MaxConnWaitTimeout: opts.Timeout,
			// ClickHouse closes idle connections after keep_alive_timeout
			// (3s by default); reusing one it just closed fails a POST that
			// fasthttp will not retry, so idle connections go first.
			MaxIdleConnDuration: 2 * time.Second,
			// Answers are error texts or a few numbers.
			MaxResponseBodySize: 1 << 20,
		},
		auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(opts.User+":"+opts.Password)),
	}, nil
}

// Send inserts b into <database>.<datasource> and interprets the answer:
// nil once ClickHouse has written the rows, a *upstream.RetryableError for
// outages, timeouts, memory limits and too many parts, a
// *upstream.StatusError for a missing table or database, refused
// credentials and rows it cannot parse.
func (c *Client) Send(ctx context.Context, b *upstream.Batch) (upstream.Result, error) {
	deadline := time.Now().Add(c.opts.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	feat, err := c.features(deadline)
	if err != nil {
		return upstream.Result{}, err
	}
	table := quoteIdent(c.opts.Database) + "." + quoteIdent(b.Key.Datasource)

	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	token, err := c.compress(req.BodyWriter(), b)
	if err != nil {
		return upstream.Result{}, fmt.Errorf("compress %d events: %w", b.Rows, err)
	}
	queryID := c.queryID(token)
	c.base.Point(req, []byte("/"), []byte(c.insertParams(table, b.Rows, token, queryID, feat).Encode()))
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.Set(fasthttp.HeaderContentEncoding, "gzip")
	req.Header.Set(fasthttp.HeaderAuthorization, c.auth)

	if err := c.client.DoDeadline(req, resp, deadline); err != nil {
		c.lost.Store(token, struct{}{})
		return upstream.Result{}, &upstream.RetryableError{Err: fmt.Errorf("insert %d rows into %s at %s: %w", b.Rows, table, c.base, err)}
	}
	status := resp.StatusCode()
	if status != fasthttp.StatusOK {
		e := parseException(status, func(k string) string { return string(resp.Header.Peek(k)) }, resp.Body())
		err := c.refusal(e, table, b.Rows)
		if e.class() == classRedetect {
			// Not in refusal: features() holds c.mu while its own query
			// runs, and a refusal there must not take it again.
			c.forgetFeatures()
		}
		if _, retry := upstream.Retryable(err); !retry {
			c.lost.Delete(token)
		} else if e.mayHaveWritten() {
			c.lost.Store(token, struct{}{})
		}
		return upstream.Result{}, err
	}
	_, maybeWritten := c.lost.LoadAndDelete(token)
	res := upstream.Result{Status: status, SuccessfulRows: b.Rows}
	summary := resp.Header.Peek("X-ClickHouse-Summary")
	if len(summary) > 0 {
		c.sawS.Store(true)
	}
	// Skipped rows are possible only with a ratio. After an attempt that may
	// have written the batch, fewer rows written means ClickHouse dropped the
	// retry as a duplicate, not that it skipped rows: all of them are in.
	if c.opts.AllowErrorsRatio == 0 || maybeWritten {
		return res, nil
	}
	written, ok := summaryWritten(summary)
	if !ok {
		written, err = c.writtenFromQueryLog(ctx, queryID, deadline)
		if err != nil {
			if !c.warn.Swap(true) {
				c.opts.Log.Warn("cannot tell how many rows ClickHouse skipped, so quarantined_rows stays 0 "+
					"(the server sends no X-ClickHouse-Summary and system.query_log did not answer)", "err", err)
			}
			return res, nil
		}
	}
	if written < b.Rows { // more than sent: materialized views count their rows too
		res.SuccessfulRows, res.QuarantinedRows = written, b.Rows-written
	}
	return res, nil
}

// insertParams are the INSERT and its settings. With a ratio, the allowed
// number of errors is the ratio applied to the whole batch: ClickHouse
// checks the ratio against the rows read so far, so without a count a bad
// first row would fail any batch.
func (c *Client) insertParams(table string, rows int, token, queryID string, feat *serverFeatures) url.Values {
	q := url.Values{}
	q.Set("query", "INSERT INTO "+table+" FORMAT JSONEachRow")
	q.Set("query_id", queryID)
	q.Set("input_format_skip_unknown_fields", "1")
	if r := c.opts.AllowErrorsRatio; r > 0 {
		q.Set("input_format_allow_errors_ratio", strconv.FormatFloat(r, 'f', -1, 64))
		q.Set("input_format_allow_errors_num", strconv.Itoa(int(r*float64(rows))))
		if !c.sawS.Load() {
			q.Set("log_queries", "1") // for writtenFromQueryLog
		}
	}
	if rows > defaultMaxInsertBlockSize {
		q.Set("max_insert_block_size", strconv.Itoa(rows))
	}
	if feat.parallelParsing {
		// Parallel parsing cuts the input into several blocks, and a parse
		// error after the first was written would leave a partial insert.
		q.Set("input_format_parallel_parsing", "0")
	}
	if feat.bestEffort {
		// ISO 8601 timestamps (2026-11-23T10:00:00Z), as Tinybird accepts.
		q.Set("date_time_input_format", "best_effort")
	}
	if feat.dedupToken {
		q.Set("insert_deduplication_token", token)
	}
	return q
}

// compress writes b into w as gzip and returns the batch's token: a hash of
// its first event's acceptance time and its bytes, the same for every retry
// of the batch and different for a later batch that happens to hold the
// same rows. BestSpeed, as for Tinybird.
func (c *Client) compress(w io.Writer, b *upstream.Batch) (string, error) {
	h := sha256.New()
	var first [8]byte
	binary.BigEndian.PutUint64(first[:], uint64(b.First))
	h.Write(first[:])
	if err := c.gz.Compress(w, b, h); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// queryID names one attempt in ClickHouse's logs: the batch token and a
// random suffix, since a retry must not collide with an attempt the server
// may still be running.
func (c *Client) queryID(token string) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return "tbproxy-" + token[:16] + "-" + hex.EncodeToString(r[:])
}

// features returns what the server supports, asking it once.
func (c *Client) features(deadline time.Time) (*serverFeatures, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.feat != nil {
		return c.feat, nil
	}
	// The database parameter makes a missing database fail here, clearly.
	body, err := c.query("SELECT name FROM system.settings WHERE name IN "+
		"('insert_deduplication_token', 'date_time_input_format', 'input_format_parallel_parsing') "+
		"UNION ALL SELECT concat('version ', version())", url.Values{"database": {c.opts.Database}}, deadline)
	if err != nil {
		return nil, fmt.Errorf("detect ClickHouse features: %w", err)
	}
	f := parseFeatures(body)
	c.feat = f
	c.opts.Log.Info("clickhouse server detected", "url", c.base, "database", c.opts.Database, "version", f.version,
		"insert_deduplication_token", f.dedupToken, "date_time_input_format", f.bestEffort)
	return f, nil
}

// forgetFeatures makes the next send detect the server's features again.
func (c *Client) forgetFeatures() {
	c.mu.Lock()
	c.feat = nil
	c.mu.Unlock()
}

// parseFeatures reads the detection query's TabSeparated answer.
func parseFeatures(body []byte) *serverFeatures {
	f := &serverFeatures{}
	for _, line := range strings.Split(string(body), "\n") {
		switch line = strings.TrimSpace(line); {
		case strings.HasPrefix(line, "version "):
			f.version = strings.TrimPrefix(line, "version ")
		case line == "insert_deduplication_token":
			f.dedupToken = true
		case line == "date_time_input_format":
			f.bestEffort = true
		case line == "input_format_parallel_parsing":
			f.parallelParsing = true
		}
	}
	return f
}

// query runs one statement (in the body, as clickhouse-client does over
// HTTP) and returns the answer, or the classified error.
func (c *Client) query(sql string, params url.Values, deadline time.Time) ([]byte, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	c.base.Point(req, []byte("/"), []byte(params.Encode()))
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.Set(fasthttp.HeaderAuthorization, c.auth)
	req.SetBodyString(sql)
	if err := c.client.DoDeadline(req, resp, deadline); err != nil {
		return nil, &upstream.RetryableError{Err: fmt.Errorf("query %s: %w", c.base, err)}
	}
	if status := resp.StatusCode(); status != fasthttp.StatusOK {
		return nil, c.refusal(parseException(status, func(k string) string { return string(resp.Header.Peek(k)) }, resp.Body()), "", 0)
	}
	return append([]byte(nil), resp.Body()...), nil
}

// summaryWritten reads written_rows from X-ClickHouse-Summary, which newer
// servers send with every answer ({"written_rows":"2",…}; the numbers are
// strings). ok is false when the header is missing or unreadable.
func summaryWritten(h []byte) (int, bool) {
	if len(h) == 0 {
		return 0, false
	}
	var s map[string]any
	if err := json.Unmarshal(h, &s); err != nil {
		return 0, false
	}
	var n int64
	var err error
	switch v := s["written_rows"].(type) {
	case string:
		n, err = strconv.ParseInt(v, 10, 64)
	case float64:
		n = int64(v)
	default:
		return 0, false
	}
	return int(n), err == nil
}

// writtenFromQueryLog asks system.query_log how many rows the insert
// queryID wrote, for servers that send no X-ClickHouse-Summary (18.x). The
// server logs a query's end just after it answers, so the log is flushed and
// read up to six times, 10ms apart and doubling.
func (c *Client) writtenFromQueryLog(ctx context.Context, queryID string, deadline time.Time) (int, error) {
	sel := "SELECT written_rows FROM system.query_log WHERE event_date >= yesterday() AND query_id = " +
		quoteString(queryID) + " AND toUInt8(type) = 2 LIMIT 1"
	wait := 10 * time.Millisecond
	for range 6 {
		if _, err := c.query("SYSTEM FLUSH LOGS", nil, deadline); err != nil {
			return 0, err
		}
		body, err := c.query(sel, nil, deadline)
		if err != nil {
			return 0, err
		}
		if s := strings.TrimSpace(string(body)); s != "" {
			return strconv.Atoi(s)
		}
		if time.Now().Add(wait).After(deadline) {
			break
		}
		if !clock.Sleep(ctx, wait) {
			return 0, ctx.Err()
		}
		wait *= 2
	}
	return 0, errors.New("system.query_log has no record of the insert")
}

// quoteIdent quotes a database or table name for ClickHouse SQL.
func quoteIdent(s string) string {
	return "`" + identEscaper.Replace(s) + "`"
}

// quoteString quotes a string literal for ClickHouse SQL.
func quoteString(s string) string {
	return "'" + stringEscaper.Replace(s) + "'"
}

var (
	identEscaper  = strings.NewReplacer(`\`, `\\`, "`", "\\`")
	stringEscaper = strings.NewReplacer(`\`, `\\`, `'`, `\'`)
)
