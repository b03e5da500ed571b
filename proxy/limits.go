package proxy

import (
	"encoding/hex"
	"strconv"

	"github.com/tbproxy/tbproxy/limits"
	"github.com/valyala/fasthttp"
)

// Limiter counts each client's events against its per-minute and per-day
// limits (*limits.Limiter).
type Limiter interface {
	Take(key string, lim limits.Limit, n int64) limits.Decision
	Refund(key string, n int64)
}

// reservation is what a request took from its client's limits, given back
// if the store refuses the request after all.
type reservation struct {
	key string
	n   int64
}

// limitFor returns the limiter key and limits a request from who is under:
// a named client's from CLIENTS_FILE, a pass-through token's from
// RATE_LIMIT_EVENTS_PER_MINUTE/DAY, or none (Off) for anyone else.
func (s *Server) limitFor(who caller) (string, limits.Limit) {
	switch {
	case s.opts.Limiter == nil:
	case who.client != nil:
		return who.client.Name, limits.Limit{PerMinute: who.client.EventsPerMinute, PerDay: who.client.EventsPerDay}
	case s.opts.PassThrough && len(who.token) > 0 && !s.opts.TokenLimit.Off():
		return tokenDigest(who.token), s.opts.TokenLimit
	}
	return "", limits.Limit{}
}

// admitRate takes n events from who's limits, all or none, and sets the
// X-RateLimit-* headers Tinybird sends. A request over a limit is answered
// 429 with Retry-After (413 if it could never fit) and false is returned.
// A client without limits costs a nil check and a few compares.
func (s *Server) admitRate(ctx *fasthttp.RequestCtx, who caller, n int) (reservation, bool) {
	if n == 0 {
		return reservation{}, true
	}
	key, lim := s.limitFor(who)
	if lim.Off() {
		return reservation{}, true
	}
	d := s.opts.Limiter.Take(key, lim, int64(n))
	h := &ctx.Response.Header
	var b [20]byte
	h.SetBytesV("X-RateLimit-Limit", strconv.AppendInt(b[:0], d.Limit, 10))
	h.SetBytesV("X-RateLimit-Remaining", strconv.AppendInt(b[:0], d.Remaining, 10))
	if d.Allowed {
		h.Set("X-RateLimit-Reset", retryAfterSeconds(d.Reset))
		return reservation{key: key, n: int64(n)}, true
	}
	limitName := s.limitName(who, d.Layer)
	switch {
	case d.Never:
		s.refuseClient(ctx, who, fasthttp.StatusRequestEntityTooLarge, reasonRateLimited,
			errorBody("request of "+strconv.Itoa(n)+" events is larger than "+limitName+" ("+strconv.FormatInt(d.Limit, 10)+"); split it into smaller requests"), n)
	case d.Untracked:
		h.Set(fasthttp.HeaderRetryAfter, "1")
		h.Set("X-RateLimit-Reset", "1")
		s.refuseClient(ctx, who, fasthttp.StatusTooManyRequests, reasonRateLimited, bodyTooManyLimited, n)
	default:
		secs := retryAfterSeconds(d.RetryAfter)
		h.Set(fasthttp.HeaderRetryAfter, secs)
		h.Set("X-RateLimit-Reset", secs)
		s.refuseClient(ctx, who, fasthttp.StatusTooManyRequests, reasonRateLimited,
			errorBody(limitName+" ("+strconv.FormatInt(d.Limit, 10)+" events) is used up; retry after the time in Retry-After"), n)
	}
	// One line an operator can act on, with the client's name (a token's
	// short digest in pass-through mode), never the token; the logger
	// throttles repeated warnings.
	s.log.Warn("client over its limit", "client", who.name(), "token_id", tokenID(who, key),
		"limit", d.Layer.String(), "events_allowed", d.Limit, "retry_after", retryAfterSeconds(d.RetryAfter))
	return reservation{}, false
}

// tokenID names a pass-through token in logs without revealing it: the
// first 8 hex digits of its SHA-256 (key is that digest), as the console
// shows it; "" for a named client.
func tokenID(who caller, key string) string {
	if who.client != nil || len(key) < 4 {
		return ""
	}
	return hex.EncodeToString([]byte(key[:4]))
}

// limitName says which limit a refusal is about, for the client's error.
func (s *Server) limitName(who caller, layer limits.Layer) string {
	if who.client != nil {
		per := "events_per_minute"
		if layer == limits.Day {
			per = "events_per_day"
		}
		return "the " + per + " of client '" + who.client.Name + "'"
	}
	if layer == limits.Day {
		return "this token's daily quota (RATE_LIMIT_EVENTS_PER_DAY)"
	}
	return "this token's per-minute limit (RATE_LIMIT_EVENTS_PER_MINUTE)"
}

// refund gives back what a refused request took from its limits.
func (s *Server) refund(r reservation) {
	if r.n > 0 {
		s.opts.Limiter.Refund(r.key, r.n)
	}
}
