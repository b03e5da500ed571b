package proxy

import (
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

// limitedConn gives its place back to its listener once, when closed.
type limitedConn struct {
	net.Conn
	l      *limitListener
	closed atomic.Bool
}

func (c *limitedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
	}
	return c.Conn.Close()
}
