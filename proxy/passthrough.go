package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/url"
	"strings"
	"time"

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
	// Timeout bounds the wait for upstream's response headers (default 30s).
	Timeout time.Duration
}

// passthrough is a streaming reverse proxy to Tinybird. Safe for
// concurrent use.
type passthrough struct {
	base   string
	token  string
	client *fasthttp.Client
	tmo    time.Duration
}

func newPassthrough(o PassthroughOptions) (*passthrough, error) {
	if o.BaseURL == "" {
		return nil, nil
	}
	u, err := url.Parse(o.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("passthrough: base URL must be http(s)://host")
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	return &passthrough{
		base:  strings.TrimRight(o.BaseURL, "/"),
		token: o.Token,
		tmo:   o.Timeout,
		client: &fasthttp.Client{
			Name:                          "tbproxy",
			NoDefaultUserAgentHeader:      true,
			StreamResponseBody:            true,
			DisableHeaderNamesNormalizing: true,
			DisablePathNormalizing:        true,
			ReadTimeout:                   o.Timeout,
			WriteTimeout:                  o.Timeout,
			MaxIdleConnDuration:           30 * time.Second,
		},
	}, nil
}

// hopByHop headers belong to one connection and are never forwarded (RFC
// 9110 §7.6.1). CORS headers are the proxy's own, so upstream's are dropped
// rather than sent twice.
func hopByHop(k []byte) bool {
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
	token := requestToken(ctx)
	if !s.opts.PassThrough && !s.authorized(token) {
		body := bodyBadToken
		if len(token) == 0 {
			body = bodyNoToken
		}
		writeError(ctx, fasthttp.StatusForbidden, body)
		return
	}

	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	args := ctx.QueryArgs()
	if !s.opts.PassThrough {
		args.Del("token") // the proxy's client token is not Tinybird's
	}
	uri := p.base + string(ctx.Path())
	if q := args.QueryString(); len(q) > 0 {
		uri += "?" + string(q)
	}
	req.SetRequestURI(uri)
	req.Header.DisableNormalizing()
	ctx.Request.Header.VisitAll(func(k, v []byte) {
		if !hopByHop(k) {
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
	if err := p.client.DoTimeout(req, resp, p.tmo); err != nil {
		fasthttp.ReleaseResponse(resp)
		status, body := fasthttp.StatusBadGateway, bodyUpstreamDown
		if errors.Is(err, fasthttp.ErrTimeout) {
			status, body = fasthttp.StatusGatewayTimeout, bodyUpstreamTimeout
		}
		s.log.Warn("passthrough failed", "request_id", requestID(ctx), "path", string(ctx.Path()), "err", err)
		writeError(ctx, status, body)
		return
	}
	ctx.SetStatusCode(resp.StatusCode())
	resp.Header.VisitAll(func(k, v []byte) {
		if !hopByHop(k) {
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
