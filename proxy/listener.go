package proxy

import (
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"
)

// limitListener caps the connections open at once. One over the cap gets
// the proxy's own answer, a JSON 503 with Retry-After, and is closed:
// fasthttp's own (its Concurrency limit) is text/plain with no Retry-After,
// which clients such as zod-bird cannot parse. Safe for concurrent use.
type limitListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused func() // counts a refused connection
}

// tooManyConnections is the whole answer to a connection over the cap.
var tooManyConnections = func() []byte {
	body := errorBody("too many connections (MAX_CONNECTIONS); retry after the time in Retry-After")
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n" +
		"Connection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body))
}()

// Accept returns the next connection within the cap, answering and closing
// every one over it on the way.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &limitedConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		l.refused()
		// The answer fits any socket buffer; the deadline only keeps a
		// client that reads nothing from stalling the accept loop.
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = c.Write(tooManyConnections)
		_ = c.Close()
	}
}

// Lingering close: what a client is still sending when the proxy closes
// its connection (the rest of a body over MAX_BODY_BYTES, headers over
// MAX_HEADER_BYTES) is read and dropped for up to lingerTime and
// lingerBytes, after the write side is shut. Closed at once, the kernel
// would answer those bytes with a reset, and a reset can destroy the
// proxy's answer (its JSON 413 or 431) before the client reads it. nginx
// and Apache do the same.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
)

// limitedConn gives its place back to its listener once, when closed, and
// closes gently (see lingerTime). A lingering connection keeps its place,
// so MaxConnections bounds those too.
type limitedConn struct {
	net.Conn
	l      *limitListener
	closed atomic.Bool
}

func (c *limitedConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	tc, ok := c.Conn.(*net.TCPConn)
	if !ok || tc.CloseWrite() != nil {
		defer c.l.open.Add(-1)
		return c.Conn.Close()
	}
	go func() {
		defer c.l.open.Add(-1)
		_ = tc.SetReadDeadline(time.Now().Add(lingerTime))
		_, _ = io.CopyN(io.Discard, tc, lingerBytes)
		_ = tc.Close()
	}()
	return nil
}
