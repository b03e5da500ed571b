package fakebird

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
)

// Response is a scripted or injected answer to an events request.
//
// A Response whose Status is 0 or 2xx "passes": the request is processed
// normally (token, name and body checks; rows recorded on success), but
// Header and Delay still apply, a 2xx Status replaces the normal success
// status and a non-empty Body replaces the normal success body (handy for
// faking a wrong successful_rows). If the normal checks fail, their error
// status and body win.
//
// Any other Status "fails": the request is answered with Status, Header and
// Body after Delay, and none of its rows are recorded.
type Response struct {
	// Status is the HTTP status; 0 means "whatever normal processing says".
	Status int
	// Header holds extra response headers, e.g. Retry-After or
	// X-RateLimit-Remaining. Content-Type defaults to application/json.
	Header map[string]string
	// Body is the response body. Empty means a Tinybird-shaped JSON error
	// derived from Status for failures, or the normal success body.
	Body string
	// Delay is how long to wait before answering. The wait ends early when
	// the client goes away, Down is called or the server is closed; the
	// request is then recorded with status 0, no rows, and the connection is
	// dropped without a response.
	Delay time.Duration
}

// passes reports whether r lets normal processing decide the outcome.
func (r *Response) passes() bool { return r.Status == 0 || isSuccess(r.Status) }

func isSuccess(status int) bool { return status >= 200 && status < 300 }

// faultState holds the script queue and the fault hook.
type faultState struct {
	mu    sync.Mutex // protects queue and hook
	queue []Response
	hook  func(*Request) *Response
}

// Script appends responses to the script queue. Each queued Response is
// consumed, in order, by exactly one subsequent events request, before any
// other processing (including the fault hook): see Response for how it is
// applied. Requests that find the queue empty are handled by the fault hook
// or normally. Script panics on a Status that is neither 0 nor a valid HTTP
// status code (100-999), as that is a bug in the test.
func (s *Server) Script(resps ...Response) {
	for _, r := range resps {
		if r.Status != 0 && (r.Status < 100 || r.Status > 999) {
			panic(fmt.Sprintf("fakebird: Script: invalid status %d", r.Status))
		}
	}
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	for _, r := range resps {
		r.Header = cloneHeader(r.Header)
		s.faults.queue = append(s.faults.queue, r)
	}
}

// Scripted returns how many scripted responses have not been consumed yet.
func (s *Server) Scripted() int {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return len(s.faults.queue)
}

// SetFault installs f as the fault hook, replacing any previous one; nil
// removes it. For every events request whose body could be decoded and
// that found the script queue empty, f is called with the request record
// (Status not yet set) before the token, name and line checks. It returns
// nil for normal processing or a Response (see Response). f is called
// concurrently from many handlers and must not modify or retain the Request.
func (s *Server) SetFault(f func(r *Request) *Response) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	s.faults.hook = f
}

// nextScripted pops the head of the script queue; false means it was empty.
func (s *Server) nextScripted() (Response, bool) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	if len(s.faults.queue) == 0 {
		return Response{}, false
	}
	r := s.faults.queue[0]
	s.faults.queue[0] = Response{}
	s.faults.queue = s.faults.queue[1:]
	return r, true
}

func (s *Server) faultHook() func(*Request) *Response {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return s.faults.hook
}

func cloneHeader(h map[string]string) map[string]string {
	if h == nil {
		return nil
	}
	c := make(map[string]string, len(h))
	for k, v := range h {
		c[k] = v
	}
	return c
}

// Always returns a fault hook that answers every request with resp.
func Always(resp Response) func(*Request) *Response {
	return func(*Request) *Response {
		r := resp
		r.Header = cloneHeader(resp.Header)
		return &r
	}
}

// ForDatasource returns a fault hook that applies f only to requests for
// datasource and lets every other request through.
func ForDatasource(datasource string, f func(*Request) *Response) func(*Request) *Response {
	return func(r *Request) *Response {
		if r.Datasource != datasource {
			return nil
		}
		return f(r)
	}
}

// Chain returns a fault hook that calls fs in order (nil entries are
// skipped). The first failing Response stops the chain and wins; passing
// Responses are merged (headers united, later values winning; delays added;
// the last non-zero Status and non-empty Body kept), so Chain(RateLimit(5),
// FailRatio(0.3, 500, 1)) both rate-limits and fails 30% of the admitted
// requests, and the failure still carries the X-RateLimit headers.
func Chain(fs ...func(*Request) *Response) func(*Request) *Response {
	return func(r *Request) *Response {
		var merged *Response
		for _, f := range fs {
			if f == nil {
				continue
			}
			resp := f(r)
			if resp == nil {
				continue
			}
			if !resp.passes() {
				if merged == nil {
					return resp
				}
				out := *resp
				out.Header = mergeHeader(merged.Header, resp.Header)
				out.Delay += merged.Delay
				return &out
			}
			if merged == nil {
				merged = &Response{}
			}
			merged.Header = mergeHeader(merged.Header, resp.Header)
			merged.Delay += resp.Delay
			if resp.Status != 0 {
				merged.Status = resp.Status
			}
			if resp.Body != "" {
				merged.Body = resp.Body
			}
		}
		return merged
	}
}

func mergeHeader(a, b map[string]string) map[string]string {
	if len(a) == 0 {
		return cloneHeader(b)
	}
	out := cloneHeader(a)
	for k, v := range b {
		out[k] = v
	}
	return out
}

// FailRatio returns a fault hook that fails each request with probability
// ratio (0..1) with the given status, drawing from a PCG generator seeded
// with seed, so a given sequence of requests fails the same way every run.
// 429 and 503 answers carry "Retry-After: 1", as clients need a delay header
// to retry them (tinybird-events-api.md §7).
func FailRatio(ratio float64, status int, seed int64) func(*Request) *Response {
	var mu sync.Mutex // protects rng
	rng := rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
	return func(*Request) *Response {
		mu.Lock()
		x := rng.Float64()
		mu.Unlock()
		if x >= ratio {
			return nil
		}
		resp := &Response{Status: status}
		if status == 429 || status == 503 {
			resp.Header = map[string]string{"Retry-After": "1"}
		}
		return resp
	}
}

// RateLimit returns a fault hook that enforces perSecond requests per second
// per datasource with a token bucket (burst perSecond), like Tinybird's
// per-datasource limit (tinybird-events-api.md §7). Admitted requests pass
// with integer X-RateLimit-Limit, X-RateLimit-Remaining and
// X-RateLimit-Reset headers; the others get 429 with the same headers plus
// an integer Retry-After (seconds, at least 1). perSecond below 1 is
// treated as 1.
func RateLimit(perSecond int) func(*Request) *Response {
	if perSecond < 1 {
		perSecond = 1
	}
	rate := float64(perSecond)
	type bucket struct {
		tokens float64
		last   time.Time
	}
	var mu sync.Mutex // protects buckets
	buckets := make(map[string]*bucket)
	limit := strconv.Itoa(perSecond)

	return func(r *Request) *Response {
		now := time.Now()
		mu.Lock()
		b := buckets[r.Datasource]
		if b == nil {
			b = &bucket{tokens: rate, last: now}
			buckets[r.Datasource] = b
		}
		b.tokens = math.Min(rate, b.tokens+now.Sub(b.last).Seconds()*rate)
		b.last = now
		allowed := b.tokens >= 1
		if allowed {
			b.tokens--
		}
		tokens := b.tokens
		mu.Unlock()

		h := map[string]string{
			"X-RateLimit-Limit":     limit,
			"X-RateLimit-Remaining": strconv.Itoa(int(math.Floor(tokens))),
			"X-RateLimit-Reset":     strconv.Itoa(ceilSeconds((rate - tokens) / rate)),
		}
		if allowed {
			return &Response{Header: h}
		}
		h["Retry-After"] = strconv.Itoa(max(1, ceilSeconds((1-tokens)/rate)))
		return &Response{Status: 429, Header: h}
	}
}

func ceilSeconds(s float64) int { return int(math.Ceil(s)) }
