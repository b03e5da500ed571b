package fakebird

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// docURL is sent as "documentation" in error bodies, as Tinybird does
// (tinybird-events-api.md §6).
const docURL = "https://www.tinybird.co/docs/api-reference/events-api"

// maxPooledBuffer is the largest body buffer kept for reuse; bigger ones are
// left to the garbage collector so one huge request does not pin memory.
const maxPooledBuffer = 32 << 20

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// ServeHTTP implements http.Handler: POST /v0/events is the Events API; any
// other path gets 404 and any other method 405, both as JSON errors. Only
// events requests are recorded.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v0/events" {
		writeResponse(w, http.StatusNotFound, nil, errorJSON("Not found: "+r.URL.Path))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeResponse(w, http.StatusMethodNotAllowed, nil, errorJSON("Method not allowed: "+r.Method))
		return
	}
	s.serveEvents(w, r)
}

// httpError is a failed contract check.
type httpError struct {
	status int
	msg    string
}

func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := &Request{
		Datasource: q.Get("name"),
		Token:      tokenOf(r, q),
		Query:      q,
		Header:     r.Header.Clone(),
		Encoding:   r.Header.Get("Content-Encoding"),
		Time:       time.Now(),
	}
	// The script is consumed first so that responses follow arrival order.
	var intercept *Response
	if resp, ok := s.nextScripted(); ok {
		intercept = &resp
	}

	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= maxPooledBuffer {
			bufPool.Put(buf)
		}
	}()

	var (
		nlines  int
		badLine error
	)
	decodeErr := s.readBody(buf, w, r, req)
	if decodeErr == nil {
		nlines, badLine = s.splitLines(req, buf.Bytes())
		if intercept == nil {
			if hook := s.faultHook(); hook != nil {
				intercept = hook(req)
			}
		}
	}

	var status int
	var body string
	switch {
	case intercept != nil && !intercept.passes():
		status, body = intercept.Status, intercept.Body
		if body == "" {
			body = errorJSON(defaultMessage(status))
		}
	default:
		if e := s.check(req, decodeErr, badLine); e != nil {
			status, body = e.status, errorJSON(e.msg)
			break
		}
		status = http.StatusAccepted
		if isTrue(q.Get("wait")) {
			status = http.StatusOK
		}
		body = fmt.Sprintf(`{"successful_rows":%d,"quarantined_rows":0}`, nlines)
		if intercept != nil && intercept.Status != 0 {
			status = intercept.Status
		}
		if intercept != nil && intercept.Body != "" {
			body = intercept.Body
		}
	}
	req.Status, req.ResponseBody = status, body

	if intercept != nil && intercept.Delay > 0 && !s.sleep(r, intercept.Delay) {
		// Client gone, Down or Close: drop the connection without answering.
		req.Status = 0
		s.rec.add(req, false, 0)
		panic(http.ErrAbortHandler)
	}

	// Record before answering, so a client that has its response always
	// finds its rows.
	s.rec.add(req, isSuccess(status), nlines)
	var hdr map[string]string
	if intercept != nil {
		hdr = intercept.Header
	}
	writeResponse(w, status, hdr, body)
}

// sleep waits d; false means the request context ended or the server is
// closing first.
func (s *Server) sleep(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	case <-s.closing.Done():
		return false
	}
}

// check applies the Events API contract in Tinybird's order: token, name,
// body decoding and size, then line validity.
func (s *Server) check(req *Request, decodeErr *httpError, badLine error) *httpError {
	switch {
	case req.Token == "":
		return &httpError{http.StatusForbidden, "Missing token: send 'Authorization: Bearer <token>' or the 'token' parameter"}
	case s.tokens != nil && !s.hasToken(req.Token):
		return &httpError{http.StatusForbidden, "Invalid token"}
	case req.Datasource == "":
		return &httpError{http.StatusBadRequest, "The 'name' parameter is required"}
	case !validName(req.Datasource):
		return &httpError{http.StatusBadRequest, fmt.Sprintf("Invalid Data Source name %q", req.Datasource)}
	case decodeErr != nil:
		return decodeErr
	case s.opts.MaxBodyBytes > 0 && req.BodyBytes > s.opts.MaxBodyBytes:
		return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"Request Entity Too Large: body of %d bytes exceeds the limit of %d bytes", req.BodyBytes, s.opts.MaxBodyBytes)}
	case badLine != nil:
		return &httpError{http.StatusBadRequest, "Invalid NDJSON: " + badLine.Error() + ". No data has been inserted"}
	}
	return nil
}

func (s *Server) hasToken(t string) bool {
	_, ok := s.tokens[t]
	return ok
}

// tokenOf prefers the Authorization header over ?token=
// (tinybird-events-api.md §3).
func tokenOf(r *http.Request, q url.Values) string {
	const prefix = "Bearer "
	if h := r.Header.Get("Authorization"); len(h) > len(prefix) && strings.EqualFold(h[:len(prefix)], prefix) {
		return strings.TrimSpace(h[len(prefix):])
	}
	return q.Get("token")
}

func isTrue(v string) bool { return strings.EqualFold(v, "true") || v == "1" }

// validName reports whether name matches ^[A-Za-z_][A-Za-z0-9_]*$.
func validName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// readBody decodes r.Body into dst, reading at most Options.MaxReadBytes
// both off the wire and after decompression, and fills req.WireBytes and
// req.BodyBytes.
func (s *Server) readBody(dst *bytes.Buffer, w http.ResponseWriter, r *http.Request, req *Request) *httpError {
	limit := s.opts.MaxReadBytes
	wire := &countingReader{r: http.MaxBytesReader(w, r.Body, limit)}
	var src io.Reader = wire
	switch enc := strings.ToLower(strings.TrimSpace(req.Encoding)); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := s.decoders.getGzip(wire)
		if err != nil {
			req.WireBytes = wire.n
			return bodyError(err, "gzip")
		}
		defer s.decoders.putGzip(zr)
		src = zr
	case "zstd":
		zr, err := s.decoders.getZstd(wire)
		if err != nil {
			req.WireBytes = wire.n
			return bodyError(err, "zstd")
		}
		defer s.decoders.putZstd(zr)
		src = zr
	default:
		return &httpError{http.StatusUnsupportedMediaType, fmt.Sprintf(
			"Unsupported Content-Encoding %q: use gzip, zstd or none", req.Encoding)}
	}
	_, err := dst.ReadFrom(io.LimitReader(src, limit+1))
	req.WireBytes, req.BodyBytes = wire.n, int64(dst.Len())
	if err != nil {
		return bodyError(err, req.Encoding)
	}
	if int64(dst.Len()) > limit {
		return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"Request Entity Too Large: decoded body exceeds %d bytes", limit)}
	}
	return nil
}

func bodyError(err error, enc string) *httpError {
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"Request Entity Too Large: body exceeds %d bytes", mbe.Limit)}
	}
	if enc == "" {
		return &httpError{http.StatusBadRequest, "Could not read the request body: " + err.Error()}
	}
	return &httpError{http.StatusBadRequest, fmt.Sprintf("Could not decode the %s request body: %v", enc, err)}
}

// splitLines counts the non-blank lines of body and, unless NoValidate,
// validates them and copies them into one new chunk referenced by req.Lines.
// badLine describes the first line that is not a JSON object.
func (s *Server) splitLines(req *Request, body []byte) (n int, badLine error) {
	var chunk []byte
	if !s.opts.NoValidate {
		chunk = make([]byte, 0, len(body))
	}
	for lineNo, rest := 1, body; len(rest) > 0; lineNo++ {
		var line []byte
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			line, rest = rest, nil
		}
		if isBlank(line) {
			continue
		}
		n++
		if s.opts.NoValidate {
			continue
		}
		if badLine == nil {
			if err := validateLine(line); err != nil {
				badLine = fmt.Errorf("line %d: %w", lineNo, err)
			}
		}
		start := len(chunk)
		chunk = append(chunk, line...)
		req.Lines = append(req.Lines, chunk[start:len(chunk):len(chunk)])
	}
	return n, badLine
}

func isBlank(line []byte) bool {
	for _, c := range line {
		if c != ' ' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}

// validateLine requires a JSON object. encoding/json.Valid scans without
// allocating, unlike goccy/go-json's Valid (house-style.md §8).
func validateLine(line []byte) error {
	trimmed := bytes.TrimLeft(line, " \t\r")
	if trimmed[0] != '{' {
		return errors.New("not a JSON object")
	}
	if !json.Valid(line) {
		return errors.New("invalid JSON")
	}
	return nil
}

func writeResponse(w http.ResponseWriter, status int, header map[string]string, body string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	for k, v := range header {
		h.Set(k, v)
	}
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// errorJSON renders Tinybird's error shape (tinybird-events-api.md §6).
func errorJSON(msg string) string {
	b, _ := json.Marshal(struct {
		Error         string `json:"error"`
		Documentation string `json:"documentation"`
	}{msg, docURL})
	return string(b)
}

// defaultMessage is the error message for a scripted or injected status
// without a Body, condensed from the Events API reference (§6).
func defaultMessage(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "The request is invalid. No data has been inserted"
	case http.StatusForbidden:
		return "The token is not valid"
	case http.StatusNotFound:
		return "The token's Workspace doesn't belong to this cluster"
	case http.StatusRequestEntityTooLarge:
		return "Request Entity Too Large"
	case http.StatusUnprocessableEntity:
		return "The ingestion has been partially completed due to an error in a Materialized View"
	case http.StatusTooManyRequests:
		return "Too many requests: the request/second limit has been reached"
	case http.StatusInternalServerError:
		return "An error has occurred while processing the data"
	case http.StatusServiceUnavailable:
		return "Service temporarily unavailable"
	}
	if t := http.StatusText(status); t != "" {
		return t
	}
	return "HTTP " + strconv.Itoa(status)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// decoderPools reuses decompressors across requests; a zstd decoder in
// particular allocates its window buffers up front.
type decoderPools struct {
	maxBytes int64
	gzip     sync.Pool // of *gzip.Reader
	zstd     sync.Pool // of *zstd.Decoder
}

func (p *decoderPools) getGzip(r io.Reader) (*gzip.Reader, error) {
	if zr, ok := p.gzip.Get().(*gzip.Reader); ok {
		if err := zr.Reset(r); err != nil {
			p.gzip.Put(zr)
			return nil, err
		}
		return zr, nil
	}
	return gzip.NewReader(r)
}

func (p *decoderPools) putGzip(zr *gzip.Reader) { p.gzip.Put(zr) }

func (p *decoderPools) getZstd(r io.Reader) (*zstd.Decoder, error) {
	if zr, ok := p.zstd.Get().(*zstd.Decoder); ok {
		if err := zr.Reset(r); err != nil {
			zr.Close()
			return nil, err
		}
		return zr, nil
	}
	// Concurrency 1 decodes synchronously, so an abandoned decoder owns no
	// goroutines; the window is bounded by the read cap.
	return zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(p.maxBytes)))
}

func (p *decoderPools) putZstd(zr *zstd.Decoder) {
	if zr.Reset(nil) == nil {
		p.zstd.Put(zr)
	}
}
