package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/tbproxy/tbproxy/internal/endpoint"
	"github.com/valyala/fasthttp"
)

// PassthroughOptions configure forwarding of the rest of Tinybird's API
// (pipes, SQL, datasources, …), so clients that use one base URL for both
// ingest and queries (zod-bird) work with a single URL swap.
type PassthroughOptions struct {
	// BaseURL is where requests go, e.g. https://api.tinybird.co. Empty
	// turns forwarding off: other paths get 404.
	BaseURL string
	// Token replaces the client's token in proxy-token mode (Options.PassThrough
	// false); in pass-through mode the client's own token is forwarded.
	Token string
	// Timeout is how long upstream may stay silent (no byte sent or
	// received) before the request is given up (default 30s). A response or
	// upload that keeps moving may take as long as it needs.
	Timeout time.Duration
	// ReadOnly forwards only GET and HEAD; other methods get 403. Used when
	// anyone may call the proxy (ALLOW_UNAUTHENTICATED), so that an open
	// proxy cannot delete or truncate datasources with TINYBIRD_TOKEN.
	ReadOnly bool
}

// passthrough is a streaming reverse proxy to Tinybird. Safe for
// concurrent use.
type passthrough struct {
	base     endpoint.Endpoint
	token    string
	readOnly bool
	client   *fasthttp.Client
}

func newPassthrough(o PassthroughOptions) (*passthrough, error) {
	if o.BaseURL == "" {
		return nil, nil
	}
	base, err := endpoint.Parse(o.BaseURL, "http", "https")
	if err != nil {
		return nil, fmt.Errorf("passthrough: base URL: %w", err)
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	idle := o.Timeout
	return &passthrough{
		base:     base,
		token:    o.Token,
		readOnly: o.ReadOnly,
		client: &fasthttp.Client{
			Name:                          "tbproxy",
			NoDefaultUserAgentHeader:      true,
			StreamResponseBody:            true,
			DisableHeaderNamesNormalizing: true,
			DisablePathNormalizing:        true,
			MaxIdleConnDuration:           30 * time.Second,
			// The client decides whether to retry, not the proxy.
			MaxIdemponentCallAttempts: 1,
			// No total deadline: fasthttp's would cut a long streamed body
			// short. Each read and write gets the idle timeout instead.
			Dial: func(addr string) (net.Conn, error) {
				c, err := fasthttp.DialTimeout(addr, idle)
				if err != nil {
					return nil, err
				}
				return &idleConn{Conn: c, idle: idle}, nil
			},
		},
	}, nil
}

// idleConn fails a read or write that makes no progress for idle, so a
// silent upstream is given up on while a slow but moving one is not.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
}

// hopByHop headers belong to one connection and are never forwarded (RFC
// 9110 §7.6.1). CORS headers are the proxy's own, so upstream's are dropped
// rather than sent twice.
// It also drops headers the Connection header names.
func hopByHop(k []byte, connection []byte) bool {
	for _, name := range bytes.Split(connection, []byte(",")) {
		if n := bytes.TrimSpace(name); len(n) > 0 && bytes.EqualFold(n, k) {
			return true
		}
	}
	switch strings.ToLower(string(k)) {
	case "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
		"te", "trailer", "transfer-encoding", "upgrade", "content-length", "host":
		return true
	}
	return bytes.HasPrefix(bytes.ToLower(k), []byte("access-control-"))
}

// forward sends the request upstream and streams the answer back: method,
// path, query, headers and body go as they came (the token swapped in
// proxy-token mode); status, headers (X-RateLimit-*, Retry-After, …) and
// body come back without buffering the whole body. An upstream that is down
// gives 502, one that does not answer in time 504, both as JSON.
func (s *Server) forward(ctx *fasthttp.RequestCtx) {
	p := s.pass
	if p.readOnly && !ctx.IsGet() && !ctx.IsHead() {
		writeError(ctx, fasthttp.StatusForbidden, bodyReadOnlyPassthrough)
		return
	}
	// In pass-through mode a request with no token goes on: upstream
	// answers it as it would answer the client. A ?token= is held to a
	// token's shape even when another Authorization scheme is used.
	if token := requestToken(ctx); len(token) > 0 || !s.opts.PassThrough {
		client, body := s.checkToken(token)
		if body != nil {
			writeError(ctx, fasthttp.StatusForbidden, body)
			return
		}
		if client != nil && len(client.Datasources) > 0 {
			// The rest of the API goes with TINYBIRD_TOKEN: it would reach
			// every datasource, past the client's allow-list.
			writeError(ctx, fasthttp.StatusForbidden, errorBody("client '"+client.Name+"' may only send events to its datasources (CLIENTS_FILE): the rest of the API is not forwarded for it"))
			return
		}
	}
	if q := ctx.QueryArgs().Peek("token"); len(q) > 0 && !s.tokenShape(q) {
		writeError(ctx, fasthttp.StatusForbidden, s.badShape)
		return
	}

	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	// The path and query as received, still percent-encoded: decoding the
	// path would turn %3F into a query and %20 into a space in upstream's
	// request line, and re-encoding the query would change what a pipe's
	// parameters mean. Only the scheme and host of TINYBIRD_BASE_URL decide
	// where the request goes (route refused every target not starting with
	// '/').
	query := ctx.URI().QueryString()
	if !s.opts.PassThrough {
		query = withoutParam(query, "token") // the proxy's client token is not Tinybird's
	}
	req.Header.DisableNormalizing()
	p.base.Point(req, ctx.URI().PathOriginal(), query)
	reqConn := ctx.Request.Header.Peek(fasthttp.HeaderConnection)
	ctx.Request.Header.VisitAll(func(k, v []byte) {
		if !hopByHop(k, reqConn) {
			req.Header.SetBytesKV(k, v)
		}
	})
	req.Header.SetMethodBytes(ctx.Method())
	if !s.opts.PassThrough {
		req.Header.Del(fasthttp.HeaderAuthorization)
		if p.token != "" {
			req.Header.Set(fasthttp.HeaderAuthorization, "Bearer "+p.token)
		}
	}
	if ctx.Request.IsBodyStream() {
		req.SetBodyStream(ctx.RequestBodyStream(), ctx.Request.Header.ContentLength())
	} else {
		req.SetBodyRaw(ctx.Request.Body())
	}

	resp := fasthttp.AcquireResponse()
	if err := p.client.Do(req, resp); err != nil {
		fasthttp.ReleaseResponse(resp)
		status, body := fasthttp.StatusBadGateway, bodyUpstreamDown
		if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, os.ErrDeadlineExceeded) {
			status, body = fasthttp.StatusGatewayTimeout, bodyUpstreamTimeout
		}
		s.log.Warn("passthrough failed", "request_id", requestID(ctx), "path", string(ctx.Path()), "err", err)
		writeError(ctx, status, body)
		return
	}
	ctx.SetStatusCode(resp.StatusCode())
	respConn := resp.Header.Peek(fasthttp.HeaderConnection)
	resp.Header.VisitAll(func(k, v []byte) {
		if !hopByHop(k, respConn) {
			ctx.Response.Header.SetBytesKV(k, v)
		}
	})
	if resp.IsBodyStream() {
		// The stream is read after the handler returns; releasing resp is
		// left to the body's Close, which fasthttp calls when it is done.
		ctx.SetBodyStream(&releasingBody{resp: resp, r: resp.BodyStream()}, resp.Header.ContentLength())
		return
	}
	ctx.SetBody(resp.Body())
	fasthttp.ReleaseResponse(resp)
}

// releasingBody streams an upstream response's body to the client and
// releases the response once fasthttp closes it.
type releasingBody struct {
	resp *fasthttp.Response
	r    io.Reader
}

func (b *releasingBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *releasingBody) Close() error {
	err := b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	return err
}

// withoutParam returns the raw query q without its name parameters, every
// other byte as it was. A key is compared percent-decoded, as the token is
// read (tok%65n is token too).
func withoutParam(q []byte, name string) []byte {
	if len(q) == 0 {
		return q
	}
	out := make([]byte, 0, len(q))
	for part := range bytes.SplitSeq(q, []byte("&")) {
		key, _, _ := bytes.Cut(part, []byte("="))
		if k, err := url.QueryUnescape(string(key)); err == nil && k == name {
			continue
		}
		if len(out) > 0 {
			out = append(out, '&')
		}
		out = append(out, part...)
	}
	return out
}
