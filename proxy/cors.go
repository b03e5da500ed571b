package proxy

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// cors answers browsers. Tinybird's own tracker (flock.js) posts
// cross-origin with Content-Type: application/json and ?token=, which makes
// the browser send a preflight first (tinybird-events-api.md §4).
type cors struct {
	any     bool
	origins [][]byte
}

func newCORS(origins []string) cors {
	var c cors
	for _, o := range origins {
		if o == "*" {
			c.any = true
		}
		c.origins = append(c.origins, []byte(o))
	}
	return c
}

// allowOrigin sets Access-Control-Allow-Origin on the response when the
// request's Origin may read it. Every response of the API gets it, errors
// included, or a browser client could not read why it was refused.
func (c cors) allowOrigin(ctx *fasthttp.RequestCtx) bool {
	origin := ctx.Request.Header.Peek(fasthttp.HeaderOrigin)
	if len(origin) == 0 {
		return false
	}
	h := &ctx.Response.Header
	if c.any {
		h.Set(fasthttp.HeaderAccessControlAllowOrigin, "*")
		return true
	}
	// The answer depends on Origin, so caches must key on it, match or not.
	h.Set(fasthttp.HeaderVary, fasthttp.HeaderOrigin)
	for _, o := range c.origins {
		if bytes.Equal(o, origin) {
			h.SetBytesV(fasthttp.HeaderAccessControlAllowOrigin, origin)
			return true
		}
	}
	return false
}

// preflight answers OPTIONS: 204 with what the browser asked for, or 403 for
// an origin that is not allowed. allowed is allowOrigin's answer for the
// request, which the caller already applied.
func (c cors) preflight(ctx *fasthttp.RequestCtx, allowed bool) {
	if !allowed {
		writeError(ctx, fasthttp.StatusForbidden, bodyOriginDenied)
		return
	}
	h := &ctx.Response.Header
	h.Set(fasthttp.HeaderAccessControlAllowMethods, "GET, POST, PUT, DELETE, OPTIONS")
	if req := ctx.Request.Header.Peek(fasthttp.HeaderAccessControlRequestHeaders); len(req) > 0 {
		h.SetBytesV(fasthttp.HeaderAccessControlAllowHeaders, req)
	} else {
		h.Set(fasthttp.HeaderAccessControlAllowHeaders, "Authorization, Content-Type, Content-Encoding")
	}
	h.Set(fasthttp.HeaderAccessControlMaxAge, "86400")
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}
