package fakebird

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Request is the record of one POST /v0/events request, successful or not.
// Records returned by Server methods are deep copies owned by the caller.
type Request struct {
	Datasource string      // the name= parameter, possibly empty or invalid
	Token      string      // from "Authorization: Bearer" or, failing that, ?token=
	Query      url.Values  // every query parameter as received
	Header     http.Header // request headers as received
	Encoding   string      // Content-Encoding as received ("" for none)

	// Lines are the non-blank NDJSON lines, byte-identical, without the
	// line terminator. They are filled whenever the body could be decoded,
	// also for rejected requests, except with Options.NoValidate.
	Lines [][]byte

	// Status is the HTTP status the request was answered with, or 0 when
	// the client went away, the server went down or was closed before the
	// answer was written (the connection was dropped without a response).
	Status int

	// ResponseBody is the body the server answered (or would have).
	ResponseBody string

	WireBytes int64     // body size as received (compressed)
	BodyBytes int64     // body size after decompression
	Time      time.Time // when the request arrived
}

// Row is one recorded row: a line from a request that was answered 2xx.
type Row struct {
	Datasource string
	Token      string
	// Line is byte-identical to what was sent, without the "\n" (a "\r"
	// before it is kept, so a sender emitting CRLF is visible).
	Line []byte
}

func (r *Request) clone() Request {
	c := *r
	c.Query = cloneValues(r.Query)
	c.Header = r.Header.Clone()
	if r.Lines != nil {
		c.Lines = make([][]byte, len(r.Lines))
		for i, l := range r.Lines {
			c.Lines[i] = append([]byte(nil), l...)
		}
	}
	return c
}

func cloneValues(v url.Values) url.Values {
	if v == nil {
		return nil
	}
	c := make(url.Values, len(v))
	for k, vs := range v {
		c[k] = append([]string(nil), vs...)
	}
	return c
}

// recorder holds everything the server observed. Stored requests and rows
// are never mutated after being appended; readers get deep copies.
type recorder struct {
	maxRequests int
	changed     chan struct{} // capacity 1, kicked after every record

	mu       sync.Mutex // protects every field below
	requests []*Request // at most 2*maxRequests when maxRequests > 0
	nreq     int        // every request ever recorded
	status   map[int]int
	rows     []Row // empty with Options.NoValidate
	nrows    int
	dsRows   map[string]int
	notify   chan struct{} // closed and replaced on every record (broadcast)
	closed   bool
}

func (rc *recorder) init(maxRequests int) {
	rc.maxRequests = maxRequests
	rc.changed = make(chan struct{}, 1)
	rc.status = make(map[int]int)
	rc.dsRows = make(map[string]int)
	rc.notify = make(chan struct{})
}

// add records req and, when rowsOK, its rows (n of them; req.Lines may be
// nil with NoValidate). req must not be modified afterwards.
func (rc *recorder) add(req *Request, rowsOK bool, n int) {
	rc.mu.Lock()
	rc.nreq++
	rc.status[req.Status]++
	rc.requests = append(rc.requests, req)
	if m := rc.maxRequests; m > 0 && len(rc.requests) >= 2*m {
		// Trim in bulk so that appending stays amortised O(1).
		k := copy(rc.requests, rc.requests[len(rc.requests)-m:])
		clear(rc.requests[k:])
		rc.requests = rc.requests[:k]
	}
	if rowsOK {
		rc.nrows += n
		rc.dsRows[req.Datasource] += n
		for _, l := range req.Lines {
			rc.rows = append(rc.rows, Row{Datasource: req.Datasource, Token: req.Token, Line: l})
		}
	}
	close(rc.notify)
	rc.notify = make(chan struct{})
	rc.mu.Unlock()

	select {
	case rc.changed <- struct{}{}:
	default:
	}
}

func (rc *recorder) close() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if !rc.closed {
		rc.closed = true
		close(rc.notify)
	}
}

// Changed returns a channel with capacity 1 that receives a value after
// every request is recorded (a kick: several records may coalesce into one
// value). It is a single-consumer signal; WaitRows and WaitRequests do not
// read from it, so they never steal kicks from a test that does.
func (s *Server) Changed() <-chan struct{} { return s.rec.changed }

// Requests returns copies of the recorded events requests in arrival order,
// including rejected ones (only the most recent Options.MaxRequests when
// that is set). The caller owns the result.
func (s *Server) Requests() []Request {
	s.rec.mu.Lock()
	reqs := s.rec.requests
	if m := s.rec.maxRequests; m > 0 && len(reqs) > m {
		reqs = reqs[len(reqs)-m:]
	}
	reqs = append([]*Request(nil), reqs...)
	s.rec.mu.Unlock()

	out := make([]Request, len(reqs))
	for i, r := range reqs {
		out[i] = r.clone()
	}
	return out
}

// RequestCount returns how many events requests have been recorded in total.
func (s *Server) RequestCount() int {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	return s.rec.nreq
}

// StatusCounts returns how many events requests were answered with each
// status; status 0 counts requests dropped without an answer. The caller
// owns the map.
func (s *Server) StatusCounts() map[int]int {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	m := make(map[int]int, len(s.rec.status))
	for k, v := range s.rec.status {
		m[k] = v
	}
	return m
}

// Rows returns copies of all recorded rows in the order they were recorded
// (request order; line order within a request). It is empty with
// Options.NoValidate. The caller owns the result.
func (s *Server) Rows() []Row { return s.copyRows("", false) }

// RowsFor is Rows restricted to one datasource.
func (s *Server) RowsFor(datasource string) []Row { return s.copyRows(datasource, true) }

func (s *Server) copyRows(ds string, filter bool) []Row {
	s.rec.mu.Lock()
	rows := s.rec.rows[:len(s.rec.rows):len(s.rec.rows)]
	s.rec.mu.Unlock()

	var out []Row
	for _, r := range rows {
		if filter && r.Datasource != ds {
			continue
		}
		r.Line = append([]byte(nil), r.Line...)
		out = append(out, r)
	}
	return out
}

// RowCount returns how many rows have been recorded in total (also with
// Options.NoValidate).
func (s *Server) RowCount() int {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	return s.rec.nrows
}

// RowCountFor returns how many rows have been recorded for datasource.
func (s *Server) RowCountFor(datasource string) int {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	return s.rec.dsRows[datasource]
}

// Reset forgets every recorded request, row and count. The script queue and
// the fault hook are kept. Handlers in flight are recorded after the reset.
func (s *Server) Reset() {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	s.rec.requests = nil
	s.rec.nreq = 0
	s.rec.status = make(map[int]int)
	s.rec.rows = nil
	s.rec.nrows = 0
	s.rec.dsRows = make(map[string]int)
}

// WaitRows blocks until at least n rows have been recorded, ctx ends or the
// server is closed. A nil error means the n rows are there; otherwise the
// error says how many rows and requests were seen.
func (s *Server) WaitRows(ctx context.Context, n int) error {
	return s.wait(ctx, "rows", n, func() int { return s.rec.nrows })
}

// WaitRequests blocks until at least n events requests (of any outcome) have
// been recorded, ctx ends or the server is closed. A nil error means the n
// requests are there.
func (s *Server) WaitRequests(ctx context.Context, n int) error {
	return s.wait(ctx, "requests", n, func() int { return s.rec.nreq })
}

// wait blocks on the recorder's broadcast channel; count runs under rc.mu.
func (s *Server) wait(ctx context.Context, what string, n int, count func() int) error {
	for {
		s.rec.mu.Lock()
		got, closed, ch := count(), s.rec.closed, s.rec.notify
		s.rec.mu.Unlock()
		if got >= n {
			return nil
		}
		var cause error
		if closed {
			cause = errors.New("server closed")
		} else {
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				cause = context.Cause(ctx)
			}
		}
		s.rec.mu.Lock()
		got, nrows, nreq := count(), s.rec.nrows, s.rec.nreq
		status := fmt.Sprint(s.rec.status)
		s.rec.mu.Unlock()
		return fmt.Errorf("fakebird: waiting for %d %s: saw %d %s (%d rows in %d requests, statuses %s): %w",
			n, what, got, what, nrows, nreq, status, cause)
	}
}
