package proxy

import (
	"strconv"

	"github.com/valyala/fasthttp"
)

// health answers 200 while the process runs. It touches nothing shared, so
// it stays cheap under any load.
func (s *Server) health(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetBodyString(`{"status":"ok"}`)
}

// ready answers 200 when the proxy should get traffic, and 503 while it is
// draining for shutdown or while the buffer is above its high-water mark,
// so a load balancer sends writes to a replica with room.
func (s *Server) ready(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.SetContentType("application/json")
	fill, notReady := s.buf.Fill(), s.notReady()
	switch {
	case s.draining.Load():
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString(`{"status":"draining"}`)
	case s.opts.UpstreamHealthy != nil && !s.opts.UpstreamHealthy():
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString(`{"status":"upstream failing"}`)
	case notReady != "":
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString(`{"status":` + strconv.Quote(notReady) + `}`)
	case fill >= s.opts.HighWatermark && !s.opts.IgnoreBufferFill:
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString(`{"status":"buffer above high-water mark","buffer_fill":` + strconv.FormatFloat(fill, 'f', 3, 64) + `}`)
	default:
		ctx.SetBodyString(`{"status":"ready","buffer_fill":` + strconv.FormatFloat(fill, 'f', 3, 64) + `}`)
	}
}

// notReady returns the first failing Options.Ready check's error text, or "".
func (s *Server) notReady() string {
	for _, f := range s.opts.Ready {
		if err := f(); err != nil {
			return err.Error()
		}
	}
	return ""
}
