// Package proxy is the HTTP front end: it speaks Tinybird's Events API
// (POST /v0/events?name=<datasource>), validates and stores each request in
// the buffer whole or not at all, and serves health, readiness and metrics.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/clients"
	"github.com/tbproxy/tbproxy/limits"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// Options configure a Server. Zero durations are replaced by defaults.
type Options struct {
	// MaxBodyBytes bounds a request body, after decompression (default 10 MiB).
	MaxBodyBytes int
	// RequestMemoryBytes bounds the memory all requests hold at once for
	// bodies being read, decoded and split (default 128 MiB); a request
	// finding it spent gets 503 with Retry-After. It must leave room for one
	// request of MaxBodyBytes (config checks REQUEST_MEMORY_BYTES).
	RequestMemoryBytes int
	// PassThrough sends each client's own token upstream: a request without
	// a token is refused, and events are keyed by (token, datasource).
	// Otherwise the flusher uses its own token and Tokens guards the proxy.
	PassThrough bool
	// Tokens are the client tokens accepted when PassThrough is false. Empty
	// means any client is accepted (ALLOW_UNAUTHENTICATED, or the file sink).
	Tokens []string
	// HighWatermark is the buffer fill (0..1] above which /ready answers 503
	// (default 0.9).
	HighWatermark float64
	// IgnoreBufferFill leaves the buffer's fill out of /ready: with a shared
	// queue (QUEUE_URL) writes go to JetStream, and the buffer holds what
	// this replica fetched to deliver, which says nothing about whether it
	// can take writes.
	IgnoreBufferFill bool
	// ReadTimeout, WriteTimeout and IdleTimeout bound each connection
	// (defaults 30s, 30s, 60s). Non-zero, or keep-alive connections could
	// hold shutdown open.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// WaitTimeout bounds how long a wait=true request is held for its rows
	// to be acknowledged upstream (default 10s).
	WaitTimeout time.Duration
	// Gatherer is served on GET /metrics; nil serves an empty registry.
	Gatherer prometheus.Gatherer
	// Passthrough forwards every other path to Tinybird; a zero value
	// answers them 404.
	Passthrough PassthroughOptions
	// CORSOrigins may call the API from a browser; "*" means any (default).
	CORSOrigins []string
	// MaxDatasources bounds the table that interns datasource names, so a
	// request for a known one allocates no string (default 1000). The
	// buffer caps the names held at once; this table is only a cache,
	// emptied when full.
	MaxDatasources int
	// MaxConnections caps concurrent connections (default 10000) and
	// MaxHeaderBytes a request's headers (default 16 KiB).
	MaxConnections, MaxHeaderBytes int
	// MaxTokenBytes caps a client token's length (default 4 KiB): a longer
	// one is refused, like one with a byte outside printable ASCII.
	MaxTokenBytes int
	// Store, when set, takes accepted requests instead of the buffer: a
	// durable spool that writes them down first and then puts them in the
	// buffer. The buffer still answers for limits and readiness.
	Store Store
	// UpstreamHealthy, when set, is consulted by /ready: false answers 503
	// (READY_REQUIRES_UPSTREAM).
	UpstreamHealthy func() bool
	// Ready are more readiness checks (the JetStream queue's connection):
	// any error answers /ready 503 with the error's text.
	Ready []func() error
	// Admin answers every path under /-/ (the operator console); nil
	// answers them 404. They are never forwarded upstream and never get
	// CORS headers.
	Admin fasthttp.RequestHandler
	// NoMetrics answers /metrics 404: it is served on ADMIN_ADDR instead.
	NoMetrics bool
	// Clients are the named clients of CLIENTS_FILE, accepted beside Tokens
	// (SetClients replaces them); nil means none. Not in PassThrough mode.
	Clients *clients.Set
	// Limiter, when set, counts named clients' events against their
	// limits, and in PassThrough mode each token's against TokenLimit.
	Limiter Limiter
	// TokenLimit limits each client token in PassThrough mode
	// (RATE_LIMIT_EVENTS_PER_MINUTE/DAY); zero is no limit.
	TokenLimit limits.Limit
	// Idempotency, when set, stores a request with an Idempotency-Key at
	// most once (IDEMPOTENCY_WINDOW).
	Idempotency Idempotency
}

func (o *Options) setDefaults() {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 10 << 20
	}
	if o.RequestMemoryBytes <= 0 {
		o.RequestMemoryBytes = 128 << 20
	}
	if o.HighWatermark <= 0 || o.HighWatermark > 1 {
		o.HighWatermark = 0.9
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 30 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 30 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 60 * time.Second
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = 10 * time.Second
	}
	if len(o.CORSOrigins) == 0 {
		o.CORSOrigins = []string{"*"}
	}
	if o.MaxDatasources <= 0 {
		o.MaxDatasources = 1000
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 10_000
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 16 << 10
	}
	if o.MaxTokenBytes <= 0 {
		o.MaxTokenBytes = 4 << 10
	}
	if o.Gatherer == nil {
		o.Gatherer = prometheus.NewRegistry()
	}
}

// Store takes a request's events, whole or not at all: *buffer.Buffer, or
// a spool in front of it. w, when not nil, is told when the rows are done.
type Store interface {
	PutWaiting(key buffer.Key, lines [][]byte, w *buffer.Waiter) error
}

// Server is the proxy's HTTP front end. Create one with New, run it with
// Serve, stop it with Drain and Shutdown. Safe for concurrent use.
type Server struct {
	buf  *buffer.Buffer
	opts Options
	log  *slog.Logger
	m    *metrics
	srv  *fasthttp.Server

	tokens   [][]byte
	budget   *memBudget // RequestMemoryBytes
	decoders *decoders
	// refuseTooLarge names MaxBodyBytes in its body.
	refuseTooLarge *refusal
	badShape       []byte    // the 403 body for a token of the wrong shape
	lines          sync.Pool // of *[][]byte, reused per request
	metricsH       fasthttp.RequestHandler
	names          names
	pass           *passthrough // nil: other paths get 404
	store          Store
	cors           cors

	draining atomic.Bool
	clients  atomic.Pointer[clients.Set] // nil: no CLIENTS_FILE
}

// New returns a Server that stores accepted events in buf. Metrics are
// registered on reg; an error means one was already registered.
func New(buf *buffer.Buffer, opts Options, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	opts.setDefaults()
	budget := &memBudget{max: int64(opts.RequestMemoryBytes)}
	m, err := newMetrics(reg, budget)
	if err != nil {
		return nil, err
	}
	pass, err := newPassthrough(opts.Passthrough)
	if err != nil {
		return nil, err
	}
	s := &Server{
		buf:      buf,
		budget:   budget,
		opts:     opts,
		log:      log,
		m:        m,
		metricsH: fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{})),
		names:    names{m: make(map[string]string), max: opts.MaxDatasources},
		pass:     pass,
		store:    opts.Store,
		cors:     newCORS(opts.CORSOrigins),
	}
	if s.store == nil {
		s.store = buf
	}
	s.badShape = errorBody("invalid token: a token is 1 to " + strconv.Itoa(opts.MaxTokenBytes) +
		" printable ASCII characters without spaces")
	if s.decoders, err = newDecoders(opts.MaxBodyBytes); err != nil {
		return nil, err
	}
	s.refuseTooLarge = &refusal{fasthttp.StatusRequestEntityTooLarge, reasonTooLarge, bodyTooLarge(opts.MaxBodyBytes), true}
	for _, t := range opts.Tokens {
		s.tokens = append(s.tokens, []byte(t))
	}
	if opts.Clients != nil {
		s.clients.Store(opts.Clients)
	}
	s.srv = &fasthttp.Server{
		Handler:            s.route,
		ErrorHandler:       s.readError,
		Name:               "tbproxy",
		ReadTimeout:        opts.ReadTimeout,
		WriteTimeout:       opts.WriteTimeout,
		IdleTimeout:        opts.IdleTimeout,
		MaxRequestBodySize: opts.MaxBodyBytes,
		// Larger bodies (datasource uploads passed through) are streamed to
		// the handler instead of refused; /v0/events bounds its own read.
		StreamRequestBody: true,
		// Serve's listener caps connections at MaxConnections with a JSON
		// answer; fasthttp's own cap, text/plain, sits above it for the
		// moment between a connection's close and its worker's release.
		Concurrency:          2 * opts.MaxConnections,
		ReadBufferSize:       opts.MaxHeaderBytes,
		NoDefaultContentType: true,
		CloseOnShutdown:      true,
		// fasthttp's "error when serving connection" would otherwise quote
		// the raw request, Authorization and ?token= included.
		SecureErrorLogMessage: true,
		Logger:                fasthttpLogger{log},
	}
	return s, nil
}

// Serve accepts connections on ln until Shutdown, at most MaxConnections
// at once. It blocks.
func (s *Server) Serve(ln net.Listener) error {
	return s.srv.Serve(&limitListener{Listener: ln, max: int64(s.opts.MaxConnections),
		refused: func() { s.m.refused(reasonMaxConns, 0) }})
}

// Drain turns /ready to 503 so load balancers stop sending traffic. Writes
// are still accepted until the buffer is closed.
func (s *Server) Drain() { s.draining.Store(true) }

// Shutdown stops accepting connections, and waits for requests in progress
// and for idle connections to close, or for ctx to end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.Drain()
	return s.srv.ShutdownWithContext(ctx)
}

func (s *Server) route(ctx *fasthttp.RequestCtx) {
	// fasthttp does not recover panics; one would take the buffered events
	// down with the process. Answer 500 instead and keep serving.
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in handler", "path", string(ctx.Path()), "panic", fmt.Sprint(p))
			ctx.Response.Reset()
			s.cors.allowOrigin(ctx) // so a browser can read the error too
			writeError(ctx, fasthttp.StatusInternalServerError, errorBody("internal error"))
		}
	}()
	setRequestID(ctx)
	if status, body := requestTarget(ctx); status != 0 {
		writeError(ctx, status, body)
		ctx.SetConnectionClose()
		s.m.request(handlerOther, status)
		return
	}
	switch string(ctx.Path()) {
	case "/v0/events":
		allowed := s.cors.allowOrigin(ctx)
		if ctx.IsOptions() {
			s.cors.preflight(ctx, allowed)
		} else {
			s.events(ctx)
		}
		s.m.request(handlerEvents, ctx.Response.StatusCode())
		return
	case "/health", "/v1/liveness":
		s.onlyGet(ctx, s.health)
	case "/ready":
		s.onlyGet(ctx, s.ready)
	case "/metrics":
		if s.opts.NoMetrics {
			writeError(ctx, fasthttp.StatusNotFound, bodyNotFound)
		} else {
			s.onlyGet(ctx, s.metricsH)
		}
	default:
		if bytes.HasPrefix(ctx.Path(), adminPrefix) {
			// The console's: not Tinybird's, so never forwarded with a
			// token, and not callable from a browser on another origin.
			if s.opts.Admin != nil {
				s.opts.Admin(ctx)
			} else {
				writeError(ctx, fasthttp.StatusNotFound, bodyNotFound)
			}
			break
		}
		allowed := s.cors.allowOrigin(ctx)
		switch {
		case ctx.IsOptions():
			s.cors.preflight(ctx, allowed)
		case s.pass != nil:
			s.forward(ctx)
			s.m.request(handlerPassthrough, ctx.Response.StatusCode())
			return
		default:
			writeError(ctx, fasthttp.StatusNotFound, bodyNotFound)
		}
	}
	s.m.request(handlerOther, ctx.Response.StatusCode())
}

var adminPrefix = []byte("/-/")

// requestTarget refuses what is not a request for a path on this server
// (origin-form, RFC 9112 §3.2.1): CONNECT and TRACE, and a target in
// absolute form (http://host/x), authority form (host:port), "*", or
// anything else not starting with '/'. Each of them names another host, and
// the proxy forwards only to the one it is configured with. It returns 0
// when the target is fine.
func requestTarget(ctx *fasthttp.RequestCtx) (int, []byte) {
	switch string(ctx.Method()) {
	case fasthttp.MethodConnect, fasthttp.MethodTrace:
		return fasthttp.StatusMethodNotAllowed, bodyNotAllowed
	}
	if rt := ctx.Request.Header.RequestURI(); len(rt) == 0 || rt[0] != '/' {
		return fasthttp.StatusBadRequest, bodyBadTarget
	}
	return 0, nil
}

// setRequestID echoes the client's X-Request-Id (if short and printable) or
// makes one from the connection and request numbers, so a log line and a
// client's report can be matched.
func setRequestID(ctx *fasthttp.RequestCtx) {
	if id := ctx.Request.Header.Peek("X-Request-Id"); len(id) > 0 && len(id) <= 128 && printable(id) {
		ctx.Response.Header.SetBytesV("X-Request-Id", id)
		return
	}
	var b [40]byte
	id := strconv.AppendUint(b[:0], ctx.ConnID(), 36)
	id = append(id, '-')
	id = strconv.AppendUint(id, ctx.ConnRequestNum(), 36)
	ctx.Response.Header.SetBytesV("X-Request-Id", id)
}

func requestID(ctx *fasthttp.RequestCtx) string {
	return string(ctx.Response.Header.Peek("X-Request-Id"))
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

func (s *Server) onlyGet(ctx *fasthttp.RequestCtx, h fasthttp.RequestHandler) {
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "GET, HEAD")
		writeError(ctx, fasthttp.StatusMethodNotAllowed, bodyNotAllowed)
		return
	}
	h(ctx)
}

// readError answers requests fasthttp could not read, in JSON like every
// other error: a body over MaxBodyBytes, oversized headers, a timeout. Each
// is counted with its reason: fasthttp has reset the request by now, so
// whether it was for /v0/events is not known.
func (s *Server) readError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	r := &refusal{fasthttp.StatusBadRequest, reasonBadRequest, bodyMalformed, true}
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		r = s.refuseTooLarge
	case errors.As(err, &small):
		r = &refusal{fasthttp.StatusRequestHeaderFieldsTooLarge, reasonBadRequest, bodyHeadersTooLarge, true}
	case isTimeout(err):
		r = refuseReadTimeout
	}
	s.m.refused(r.reason, 0)
	writeError(ctx, r.status, r.body)
}

// names interns datasource names, so a request for a known datasource
// allocates no string for it. Names come from clients: the table holds at
// most max of them and is emptied when full, so junk names cost a bounded
// table, and real ones one allocation each after it empties. The limit on
// names that matters, those held at once, is the buffer's. Safe for
// concurrent use.
type names struct {
	mu  sync.RWMutex // protects m
	m   map[string]string
	max int
}

// intern returns the name as a string.
func (n *names) intern(b []byte) string {
	n.mu.RLock()
	s, ok := n.m[string(b)] // no allocation: the compiler special-cases this lookup
	n.mu.RUnlock()
	if ok {
		return s
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.m[string(b)]; ok {
		return s
	}
	if len(n.m) >= n.max {
		clear(n.m)
	}
	s = string(b)
	n.m[s] = s
	return s
}

// fasthttpLogger routes fasthttp's own messages to slog at debug level.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("fasthttp", "msg", fmt.Sprintf(format, args...))
	}
}
