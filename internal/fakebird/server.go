package fakebird

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// DefaultMaxReadBytes is the default cap on how many bytes of a request body
// (both as received and after decompression) the server reads. Tinybird's
// largest documented request size is 100 MB (tinybird-events-api.md §7), so
// 200 MiB lets every legal request through while keeping a runaway client
// from exhausting memory.
const DefaultMaxReadBytes = 200 << 20

// Options configures a Server. The zero value is a permissive fake that
// accepts any non-empty token, validates every line and records everything.
type Options struct {
	// Addr is the TCP address to listen on. Empty means "127.0.0.1:0", a
	// free loopback port.
	Addr string

	// Tokens, when non-empty, is the set of accepted tokens; any other token
	// gets 403. When empty, any non-empty token is accepted. A missing token
	// always gets 403 (tinybird-events-api.md §3).
	Tokens []string

	// NoValidate skips JSON validation and stops retaining lines: requests
	// only count their non-blank lines. RowCount, RowCountFor, WaitRows and
	// StatusCounts keep working; Rows, RowsFor and Request.Lines stay empty.
	// Meant for load tests where the fake must be cheap.
	NoValidate bool

	// MaxBodyBytes, when positive, answers 413 to any request whose decoded
	// body is larger (Tinybird's per-request limit, §7). Used to test batch
	// splitting.
	MaxBodyBytes int64

	// MaxReadBytes caps how much of a body is read, before and after
	// decompression; larger bodies get 413. Zero means DefaultMaxReadBytes.
	MaxReadBytes int64

	// MaxRequests, when positive, keeps only the most recent MaxRequests
	// records for Requests. Counters (StatusCounts, WaitRequests) still see
	// every request. Zero keeps all records.
	MaxRequests int
}

// Server is a running fake Tinybird Events API. Create it with New, NewTB or
// Start; the zero value is not usable. All methods are safe for concurrent
// use.
type Server struct {
	opts   Options
	tokens map[string]struct{}
	ts     *httptest.Server
	ln     *switchListener
	url    string

	// closing is cancelled by Close so that handlers sleeping in a
	// Response.Delay return at once instead of pinning httptest.Server.Close.
	closing   context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once

	decoders decoderPools
	faults   faultState
	rec      recorder
}

// New starts a Server on Options.Addr (default 127.0.0.1:0). Like
// httptest.NewServer it panics if it cannot listen; use Start to get an
// error instead.
func New(opts Options) *Server {
	s, err := Start(opts)
	if err != nil {
		panic(err)
	}
	return s
}

// NewTB is New for tests: it fails t if the server cannot start and
// registers Close with t.Cleanup.
func NewTB(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("fakebird: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts a Server on Options.Addr (default 127.0.0.1:0) and returns an
// error if it cannot listen. The caller must call Close.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.MaxReadBytes <= 0 {
		opts.MaxReadBytes = DefaultMaxReadBytes
	}
	inner, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("fakebird: listen on %s: %w", opts.Addr, err)
	}
	s := &Server{opts: opts, ln: newSwitchListener(inner)}
	if len(opts.Tokens) > 0 {
		s.tokens = make(map[string]struct{}, len(opts.Tokens))
		for _, t := range opts.Tokens {
			s.tokens[t] = struct{}{}
		}
	}
	s.closing, s.cancel = context.WithCancel(context.Background())
	s.decoders.maxBytes = opts.MaxReadBytes
	s.rec.init(opts.MaxRequests)
	s.ts = &httptest.Server{Listener: s.ln, Config: &http.Server{Handler: s}}
	s.ts.Start()
	s.url = s.ts.URL
	return s, nil
}

// URL returns the base URL, e.g. "http://127.0.0.1:41234", without a
// trailing slash. It stays the same across Down and Up.
func (s *Server) URL() string { return s.url }

// EventsURL returns URL()+"/v0/events".
func (s *Server) EventsURL() string { return s.url + "/v0/events" }

// Close stops the server: handlers sleeping in a Response.Delay are aborted
// (their connection is dropped without a response), then it blocks until all
// handlers have returned. Pending WaitRows and WaitRequests calls return an
// error. Close is idempotent.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.cancel()
		s.ts.Close() // waits for every handler, which may still record
		s.rec.close()
	})
}

// Down makes the server unreachable until Up: it closes the listening socket,
// so new connections are refused (ECONNREFUSED, a real network error rather
// than an HTTP status), and closes every open connection, so idle keep-alive
// connections and requests in flight (for example sleeping in a Delay) fail
// too. The http.Server keeps running; its Accept simply blocks until Up.
// Like a real outage, a request being processed at that very instant may
// still be recorded (rows included) although its client sees an error.
// Down on a server that is already down is a no-op.
//
// Closing the listener was chosen over accepting and resetting connections
// because it gives clients a genuine "connection refused" and keeps URL()
// valid: Up binds the same address again.
func (s *Server) Down() { s.ln.down() }

// Up re-listens on the same address, so URL() works again. It returns an
// error if the port was taken by someone else while the server was down, or
// if the server is closed. Up on a server that is up is a no-op.
func (s *Server) Up() error { return s.ln.up() }

// IsDown reports whether the server is between Down and Up.
func (s *Server) IsDown() bool {
	s.ln.mu.Lock()
	defer s.ln.mu.Unlock()
	return s.ln.ln == nil && !s.ln.closed
}

// switchListener is a net.Listener whose underlying socket can be closed
// (down) and re-opened on the same address (up) without stopping the
// http.Server that accepts from it. It tracks the connections it handed out
// so down can close them.
type switchListener struct {
	addr net.Addr

	mu     sync.Mutex // protects every field below
	ln     net.Listener
	closed bool
	conns  map[*trackedConn]struct{}
	wake   chan struct{} // closed and replaced when ln or closed changes
}

func newSwitchListener(ln net.Listener) *switchListener {
	return &switchListener{
		addr:  ln.Addr(),
		ln:    ln,
		conns: make(map[*trackedConn]struct{}),
		wake:  make(chan struct{}),
	}
}

// Accept blocks while the listener is down and returns net.ErrClosed once it
// is closed.
func (l *switchListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, net.ErrClosed
		}
		ln, wake := l.ln, l.wake
		l.mu.Unlock()
		if ln == nil {
			<-wake
			continue
		}
		c, err := ln.Accept()
		l.mu.Lock()
		switch {
		case l.closed:
			l.mu.Unlock()
			if c != nil {
				c.Close()
			}
			return nil, net.ErrClosed
		case l.ln != ln:
			// Went down (and maybe up again) while accepting.
			l.mu.Unlock()
			if c != nil {
				c.Close()
			}
			continue
		case err != nil:
			l.mu.Unlock()
			return nil, err
		}
		tc := &trackedConn{Conn: c, l: l}
		l.conns[tc] = struct{}{}
		l.mu.Unlock()
		return tc, nil
	}
}

func (l *switchListener) down() {
	l.mu.Lock()
	if l.closed || l.ln == nil {
		l.mu.Unlock()
		return
	}
	ln := l.ln
	l.ln = nil
	conns := l.conns
	l.conns = make(map[*trackedConn]struct{})
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()

	ln.Close()
	for c := range conns {
		c.Conn.Close()
	}
}

func (l *switchListener) up() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("fakebird: up: server closed")
	}
	if l.ln != nil {
		return nil
	}
	ln, err := net.Listen(l.addr.Network(), l.addr.String())
	if err != nil {
		return fmt.Errorf("fakebird: up: re-listen on %s: %w", l.addr, err)
	}
	l.ln = ln
	close(l.wake)
	l.wake = make(chan struct{})
	return nil
}

// Close closes the socket; connections are left to http.Server, which
// closes them itself on shutdown.
func (l *switchListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	close(l.wake)
	if l.ln != nil {
		return l.ln.Close()
	}
	return nil
}

func (l *switchListener) Addr() net.Addr { return l.addr }

// trackedConn removes itself from its listener's set when closed.
type trackedConn struct {
	net.Conn
	l *switchListener
}

func (c *trackedConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}
