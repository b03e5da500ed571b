package proxy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/idempotency"
	"github.com/valyala/fasthttp"
)

// maxPooledLines caps the line slices kept for reuse between requests.
const maxPooledLines = 64 << 10

// events handles POST /v0/events?name=<datasource>. The request is accepted
// whole (202) or refused whole: nothing is stored unless every line is valid,
// its client is within its limits and the buffer has room for all of them.
// It reads as parse (the request line, then the body), admit (a repeated
// Idempotency-Key, the client's limits), store, respond.
func (s *Server) events(ctx *fasthttp.RequestCtx) {
	key, who, ok := s.eventsKey(ctx)
	if !ok {
		return
	}
	var b body
	defer s.release(&b) // also on every refusal; a stored request releases earlier
	if r := s.readBody(ctx, &b); r != nil {
		if r.status == fasthttp.StatusServiceUnavailable {
			ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		}
		s.refuseClient(ctx, who, r.status, r.reason, r.body, 0)
		if r.unread {
			ctx.SetConnectionClose() // the rest of the body was not read
		}
		return
	}
	lines := b.lines
	k, ok := s.beginKeyed(ctx, who, key, lines)
	if !ok {
		return
	}
	defer k.forget() // a no-op once done
	r, ok := s.admitRate(ctx, who, len(lines))
	if !ok {
		return
	}
	wait := isTrue(ctx.QueryArgs().Peek("wait"))
	var w *buffer.Waiter
	if wait && len(lines) > 0 {
		w = buffer.NewWaiter()
	}
	if dup, err := s.put(key, lines, w, k.id); err != nil || dup {
		s.refund(r)
		if err != nil {
			s.refuseStore(ctx, who, err, lines)
			return
		}
		// The queue had it from an earlier request, maybe another
		// replica's: stored once, answered as stored.
		ctx.Response.Header.Set("Idempotent-Replayed", "true")
		k.done(writeAnswer(ctx, idempotency.Answer{Status: fasthttp.StatusAccepted, Successful: len(lines)}))
		return
	}
	s.m.accepted.Add(float64(len(lines)))
	s.m.clientAccepted(who.name(), len(lines))
	k.stored(s, ctx, len(lines))
	// The buffer copied the lines: give the body's memory back now, not
	// after a wait=true request has waited up to WAIT_TIMEOUT.
	s.release(&b)
	if w != nil {
		k.done(s.await(ctx, w, len(lines)))
		return
	}
	status := fasthttp.StatusAccepted
	if wait {
		status = fasthttp.StatusOK // nothing to wait for: an empty body
	}
	k.done(writeAnswer(ctx, idempotency.Answer{Status: status, Successful: len(lines)}))
}

// put hands the request to the store; id, when not "", is its idempotency
// id for a store that deduplicates by one (the queue).
func (s *Server) put(key buffer.Key, lines [][]byte, w *buffer.Waiter, id string) (duplicate bool, err error) {
	if id != "" {
		if is, ok := s.store.(IdempotentStore); ok {
			return is.PutIdempotent(key, lines, w, id)
		}
	}
	return false, s.store.PutWaiting(key, lines, w)
}

// eventsKey checks the method, the datasource name, the token and the
// client's allow-list, and returns the key the request's rows are stored
// under and who sent them; false means the request was refused.
func (s *Server) eventsKey(ctx *fasthttp.RequestCtx) (buffer.Key, caller, bool) {
	if !ctx.IsPost() {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "POST")
		writeError(ctx, fasthttp.StatusMethodNotAllowed, bodyNotAllowed)
		return buffer.Key{}, caller{}, false
	}
	name := ctx.QueryArgs().Peek("name")
	if len(name) == 0 {
		s.refuse(ctx, fasthttp.StatusBadRequest, reasonBadRequest, bodyMissingName, 0)
		return buffer.Key{}, caller{}, false
	}
	if !buffer.ValidDatasource(name) {
		s.refuse(ctx, fasthttp.StatusBadRequest, reasonBadRequest, bodyBadName, 0)
		return buffer.Key{}, caller{}, false
	}
	token := requestToken(ctx)
	client, body := s.checkToken(token)
	if body != nil {
		s.refuse(ctx, fasthttp.StatusForbidden, reasonUnauthorized, body, 0)
		return buffer.Key{}, caller{}, false
	}
	who := caller{client: client, token: token}
	if !s.allowed(ctx, who, name) {
		return buffer.Key{}, caller{}, false
	}
	key := buffer.Key{Datasource: s.names.intern(name), Client: who.name()}
	if s.opts.PassThrough {
		key.Token = string(token)
	}
	return key, who, true
}

// storeRefusals is what a client is told when the store refuses its rows,
// by the store's error; the first match wins. buffer.ErrFull and
// buffer.ErrTooLarge are answered by refuseStore itself, after these rows
// (their Retry-After and body depend on the request); the last row
// (closed) also answers an error nothing else names.
var storeRefusals = [...]struct {
	err        error
	status     int
	reason     string
	body       []byte
	retryAfter string // "" for none
}{
	// They pass as soon as the flusher delivers what is held.
	{buffer.ErrTooManyDatasources, fasthttp.StatusTooManyRequests, reasonTooManyKeys, bodyTooManyNames, "1"},
	{buffer.ErrTooManyTokens, fasthttp.StatusTooManyRequests, reasonTooManyKeys, bodyTooManyTokens, "1"},
	{buffer.ErrStreamShare, fasthttp.StatusTooManyRequests, reasonStreamShare, nil, ""}, // body and Retry-After below
	{buffer.ErrDenied, fasthttp.StatusForbidden, reasonUnauthorized, bodyDeniedToken, ""},
	{buffer.ErrStorage, fasthttp.StatusServiceUnavailable, reasonStorage, bodyStorage, "5"},
	{buffer.ErrClosed, fasthttp.StatusServiceUnavailable, reasonShuttingDown, bodyShuttingDown, ""},
}

// refuseStore answers a request whose rows the store refused with err.
func (s *Server) refuseStore(ctx *fasthttp.RequestCtx, who caller, err error, lines [][]byte) {
	for _, c := range storeRefusals {
		if c.body != nil && errors.Is(err, c.err) { // before ErrFull: too many keys is a full buffer too
			if c.retryAfter != "" {
				ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, c.retryAfter)
			}
			s.refuseClient(ctx, who, c.status, c.reason, c.body, len(lines))
			return
		}
	}
	switch {
	case errors.Is(err, buffer.ErrStreamShare):
		// One client's stream holds its share while others send: it waits
		// for its own rows to drain, the others keep flowing.
		secs := retryAfterSeconds(s.buf.RetryAfter(len(lines), buffer.Size(lines)))
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, secs)
		s.refuseClient(ctx, who, fasthttp.StatusTooManyRequests, reasonStreamShare, bodyStreamShare, len(lines))
		return
	case errors.Is(err, buffer.ErrFull):
		body, wait := bodyBufferFull, time.Duration(0)
		if full := (*buffer.FullError)(nil); errors.As(err, &full) { // the store's own limit: the spool's disk
			body, wait = errorBody(full.Limit+" is full; retry after the time in Retry-After"), full.RetryAfter
		} else {
			wait = s.buf.RetryAfter(len(lines), buffer.Size(lines))
		}
		secs := retryAfterSeconds(wait)
		h := &ctx.Response.Header
		h.Set(fasthttp.HeaderRetryAfter, secs)
		h.Set("X-RateLimit-Limit", strconv.Itoa(s.buf.Stats().MaxEvents))
		h.Set("X-RateLimit-Remaining", "0")
		h.Set("X-RateLimit-Reset", secs)
		s.refuseClient(ctx, who, fasthttp.StatusTooManyRequests, reasonBufferFull, body, len(lines))
		return
	case errors.Is(err, buffer.ErrTooLarge):
		body := bodyTooManyEvents
		if tl := (*buffer.TooLargeError)(nil); errors.As(err, &tl) {
			body = errorBody("request larger than " + tl.Limit + "; split it into smaller requests")
		}
		s.refuseClient(ctx, who, fasthttp.StatusRequestEntityTooLarge, reasonTooLarge, body, len(lines))
		return
	}
	closed := storeRefusals[len(storeRefusals)-1]
	s.refuseClient(ctx, who, closed.status, closed.reason, closed.body, len(lines))
}

// await holds a wait=true request until its rows are acknowledged upstream
// (200 with its rows' counts), refused for good (upstream's status and
// error), or WaitTimeout passes (503: the rows stay queued and will still be
// delivered, so a client that retries without an Idempotency-Key may create
// duplicates). The handler's goroutine blocks on one channel; nothing spins
// and nothing locks per row. It returns what a repeat of the request with
// its Idempotency-Key is told: after a timeout, that the n rows are stored.
func (s *Server) await(ctx *fasthttp.RequestCtx, w *buffer.Waiter, n int) idempotency.Answer {
	t := time.NewTimer(s.opts.WaitTimeout)
	defer t.Stop()
	select {
	case <-w.Done():
	case <-t.C:
		w.Abandon() // a store holding it for rows still on disk lets it go
		s.m.waitTimeouts.Inc()
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, strconv.Itoa(max(1, int(s.opts.WaitTimeout.Round(time.Second)/time.Second))))
		writeError(ctx, fasthttp.StatusServiceUnavailable, bodyWaitTimeout)
		return idempotency.Answer{Status: fasthttp.StatusAccepted, Successful: n}
	}
	successful, quarantined, f := w.Result()
	if f != nil {
		return writeAnswer(ctx, idempotency.Answer{Status: f.Status, Error: f.Message})
	}
	return writeAnswer(ctx, idempotency.Answer{Status: fasthttp.StatusOK, Successful: successful, Quarantined: quarantined})
}

// writeAnswer answers with a: its error, or its counts. It returns a.
func writeAnswer(ctx *fasthttp.RequestCtx, a idempotency.Answer) idempotency.Answer {
	if a.Error != "" {
		writeError(ctx, a.Status, errorBody(a.Error))
		return a
	}
	writeSuccess(ctx, a.Status, a.Successful, a.Quarantined)
	return a
}

// retryAfterSeconds renders d for Retry-After as whole seconds, rounded
// up so a client never comes back before there is room. Integer seconds:
// the OTel exporter parses Retry-After with Atoi, the old Python SDK with
// int() (tinybird-events-api.md §7).
func retryAfterSeconds(d time.Duration) string {
	return strconv.Itoa(int((d + time.Second - 1) / time.Second))
}

// isTrue reads a boolean query parameter as clients send it ("true", "1").
func isTrue(v []byte) bool {
	return bytes.EqualFold(v, []byte("true")) || bytes.Equal(v, []byte("1"))
}

func (s *Server) refuse(ctx *fasthttp.RequestCtx, status int, reason string, body []byte, events int) {
	s.refuseClient(ctx, caller{}, status, reason, body, events)
}

// refuseClient answers status with body, counts the refusal by reason
// (and by client, for a named one) and logs it at debug level with the
// client's name, never its token.
func (s *Server) refuseClient(ctx *fasthttp.RequestCtx, who caller, status int, reason string, body []byte, events int) {
	s.m.refused(reason, events)
	name := who.name()
	if name != "" {
		s.m.clientRefused(name, reason)
	}
	writeError(ctx, status, body)
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("request refused", "request_id", requestID(ctx), "client", name, "status", status, "reason", reason, "events", events)
	}
}

// body is one request's body as it was read, decoded and split into lines,
// and the memory holding it, charged to the server's budget. It lives on
// the handler's stack; release gives everything back.
type body struct {
	lines        [][]byte // alias raw or decoded
	raw, decoded *bodyBuf // nil when not used
	lp           *[][]byte
	mem          charge
}

// refusal is how a request is refused: status, metric reason, JSON body,
// and whether part of the body is left unread on the connection.
type refusal struct {
	status int
	reason string
	body   []byte
	unread bool
}

// Refusals of a body, by cause. Over budget is a 503 with Retry-After: the
// request is fine, the proxy is holding too many others at once.
var (
	refuseOverBudget   = &refusal{fasthttp.StatusServiceUnavailable, reasonOverloaded, bodyOverloaded, true}
	refuseReadTimeout  = &refusal{fasthttp.StatusRequestTimeout, reasonReadTimeout, bodyReadTimeout, true}
	refuseBadBody      = &refusal{fasthttp.StatusBadRequest, reasonBadRequest, bodyUnreadable, true}
	refuseUnsupported  = &refusal{fasthttp.StatusUnsupportedMediaType, reasonBadRequest, bodyUnsupportedCE, false}
	refuseBadEncoding  = &refusal{fasthttp.StatusBadRequest, reasonBadRequest, bodyBadCompressed, false}
	refuseTooManyLines = &refusal{fasthttp.StatusRequestEntityTooLarge, reasonTooLarge, bodyTooManyEvents, false}
)

// readBody reads, decodes and splits the request's body into b, or says why
// the request is refused. Everything it holds is charged to the budget as
// it is allocated.
func (s *Server) readBody(ctx *fasthttp.RequestCtx, b *body) *refusal {
	b.mem.b = s.budget
	raw, err := s.rawBody(ctx, b)
	switch {
	case errors.Is(err, errTooLarge):
		return s.refuseTooLarge
	case errors.Is(err, errOverBudget):
		return refuseOverBudget
	case isTimeout(err):
		return refuseReadTimeout
	case err != nil:
		return refuseBadBody
	}
	decoded, bb, err := s.decoders.decode(ctx.Request.Header.ContentEncoding(), raw, &b.mem)
	b.decoded = bb
	switch {
	case errors.Is(err, errTooLarge):
		r := *s.refuseTooLarge
		r.unread = false
		return &r
	case errors.Is(err, errOverBudget):
		r := *refuseOverBudget
		r.unread = false
		return &r
	case errors.Is(err, errUnsupportedCE):
		return refuseUnsupported
	case err != nil:
		return refuseBadEncoding
	}
	// A body with more lines than the whole buffer holds can never be
	// accepted: refuse it before building a slice of lines for it (a small
	// gzip'd body of "{}" lines would otherwise cost ~100 MB of slice).
	n := bytes.Count(decoded, []byte{'\n'}) + 1
	if n > s.buf.Stats().MaxEvents+1 {
		return refuseTooManyLines
	}
	b.lp, _ = s.lines.Get().(*[][]byte)
	if b.lp == nil {
		b.lp = new([][]byte)
	}
	// n counts blank lines too, so it bounds the index: charge it, but let
	// the index grow as lines are found (a body of blank lines needs none),
	// charging whatever growth rounding adds past n.
	charged := max(n, cap(*b.lp)) * sliceHeaderBytes
	if !b.mem.take(charged) {
		r := *refuseOverBudget
		r.unread = false
		return &r
	}
	lines, lerr := splitLines((*b.lp)[:0], decoded)
	*b.lp = lines
	b.mem.force(cap(lines)*sliceHeaderBytes - charged)
	if lerr != nil {
		return &refusal{fasthttp.StatusBadRequest, reasonInvalidBody, errorBody(lerr.Error()), false}
	}
	b.lines = lines
	return nil
}

// sliceHeaderBytes is what one line costs in the index of a body's lines.
const sliceHeaderBytes = 24

// release gives back the memory b holds: its buffers and line index to the
// pools, its charge to the budget. It is idempotent.
func (s *Server) release(b *body) {
	s.decoders.bodies.put(b.raw)
	s.decoders.bodies.put(b.decoded)
	b.raw, b.decoded = nil, nil
	if lp := b.lp; lp != nil && cap(*lp) <= maxPooledLines { // let a rare huge slice go
		clear(*lp) // do not pin this request's body through the pool
		*lp = (*lp)[:0]
		s.lines.Put(lp)
	}
	b.lp, b.lines = nil, nil
	b.mem.release()
}

// rawBody returns the request body as received, at most MaxBodyBytes, or
// errTooLarge beyond it (read no further), errOverBudget, or the error that
// reading the connection gave. With StreamRequestBody (for passthrough
// uploads) fasthttp 1.78 hands every body over as a stream, even one it has
// already read, so the body is read from the stream into a pooled buffer
// (one memcpy, cheap next to validation), charged to b's budget as it grows.
// Request.Body() would copy too, and log a warning per request.
func (s *Server) rawBody(ctx *fasthttp.RequestCtx, b *body) ([]byte, error) {
	if !ctx.Request.IsBodyStream() {
		raw := ctx.Request.Body()
		if !b.mem.take(len(raw)) {
			return nil, errOverBudget
		}
		return raw, nil
	}
	if n := ctx.Request.Header.ContentLength(); n > s.opts.MaxBodyBytes {
		return nil, errTooLarge
	}
	// No size hint from Content-Length: a client that declares 10 MB and
	// sends nothing must hold nothing.
	bb, n, err := s.decoders.bodies.read(ctx.RequestBodyStream(), s.opts.MaxBodyBytes, 0, &b.mem)
	b.raw = bb
	if err == nil && n > int64(s.opts.MaxBodyBytes) {
		err = errTooLarge
	}
	if err != nil {
		return nil, err
	}
	return bb.B, nil
}

// isTimeout reports whether err is a read that ran out of time
// (READ_TIMEOUT), not a malformed body.
func isTimeout(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// requestToken returns the token from "Authorization: Bearer <t>", else
// from ?token=<t> (Tinybird accepts both; the tb CLI and flock.js use the
// query parameter). The result aliases the request.
func requestToken(ctx *fasthttp.RequestCtx) []byte {
	if h := ctx.Request.Header.Peek(fasthttp.HeaderAuthorization); len(h) > 0 {
		const bearer = "bearer "
		if len(h) > len(bearer) && bytes.EqualFold(h[:len(bearer)], []byte(bearer)) {
			return bytes.TrimSpace(h[len(bearer):])
		}
		return nil // a non-Bearer scheme carries no token we can use
	}
	return ctx.QueryArgs().Peek("token")
}

// tokenShape reports whether token is 1 to MaxTokenBytes bytes of printable
// ASCII, with no spaces.
func (s *Server) tokenShape(token []byte) bool {
	return buffer.ValidToken(token, s.opts.MaxTokenBytes)
}

func writeSuccess(ctx *fasthttp.RequestCtx, status, successful, quarantined int) {
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	var b [80]byte
	ctx.SetBody(successBody(b[:0], successful, quarantined))
}
