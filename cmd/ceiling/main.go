// Command ceiling is the listener stack of the proxy with nothing behind it:
// a fasthttp.Server configured as proxy/server.go configures its own (with
// the proxy's default limits), whose handler reads the body, counts its
// lines and answers 202 {"successful_rows":N,"quarantined_rows":0}. It
// measures what this machine can do with this listener stack; bench/perf.sh
// reports every proxy figure as a ratio to it.
//
// With -bare it is fasthttp as it comes instead: a fasthttp.Server with
// nothing set but the handler (default buffer sizes, limits and timeouts,
// the body read whole before the handler runs), on a plain net.Listener,
// the same handler. The proxy's accept path is measured against both.
//
//	ceiling -addr 127.0.0.1:8090
//	ceiling -addr 127.0.0.1:8090 -bare
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"
)

// The proxy's defaults (README's Configuration table, proxy.Options).
const (
	maxBodyBytes   = 10 << 20
	maxConnections = 10_000
	maxHeaderBytes = 16 << 10
	readTimeout    = 30 * time.Second
	writeTimeout   = 30 * time.Second
	idleTimeout    = 60 * time.Second
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8090", "address to listen on")
	bare := flag.Bool("bare", false, "fasthttp's default server settings instead of the proxy's")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ceiling:", err)
		os.Exit(1)
	}
	srv := proxyServer()
	kind := "proxy settings"
	if *bare {
		// fasthttp's defaults: 4 KiB buffers, 4 MiB bodies read whole
		// before the handler runs, no timeouts, 256k connections.
		srv, kind = &fasthttp.Server{Handler: handle}, "fasthttp defaults"
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		srv.Shutdown()
	}()
	fmt.Fprintf(os.Stderr, "ceiling: %s\n", kind)
	fmt.Fprintln(os.Stderr, "ceiling: listening on", ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintln(os.Stderr, "ceiling:", err)
		os.Exit(1)
	}
}

// proxyServer is configured as proxy/server.go configures the proxy's.
func proxyServer() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:              handle,
		Name:                 "tbproxy",
		ReadTimeout:          readTimeout,
		WriteTimeout:         writeTimeout,
		IdleTimeout:          idleTimeout,
		MaxRequestBodySize:   maxBodyBytes,
		StreamRequestBody:    true,
		Concurrency:          maxConnections,
		ReadBufferSize:       maxHeaderBytes,
		NoDefaultContentType: true,
		CloseOnShutdown:      true,
	}
}

var (
	contentType = []byte("application/json")
	bodies      bytebufferpool.Pool
)

// handle answers like the proxy's accept path, without validating or
// storing anything. It reads the body as proxy.(*Server).rawBody does:
// with StreamRequestBody every body arrives as a stream (already buffered
// when small), and ctx.PostBody() on a stream logs a warning per request,
// so the stream is copied into a pooled buffer, bounded by maxBodyBytes.
// With -bare the body is already in memory and is used as it is.
// Bodies are not decoded: a gzip'd request gets a meaningless row count.
func handle(ctx *fasthttp.RequestCtx) {
	var body []byte
	if ctx.Request.IsBodyStream() {
		buf := bodies.Get()
		defer bodies.Put(buf)
		n, err := buf.ReadFrom(io.LimitReader(ctx.RequestBodyStream(), maxBodyBytes+1))
		if err != nil || n > maxBodyBytes {
			ctx.SetStatusCode(fasthttp.StatusRequestEntityTooLarge)
			return
		}
		body = buf.B
	} else {
		body = ctx.PostBody()
	}
	n := bytes.Count(body, []byte{'\n'})
	if len(body) > 0 && body[len(body)-1] != '\n' {
		n++
	}
	ctx.SetStatusCode(fasthttp.StatusAccepted)
	ctx.Response.Header.SetContentTypeBytes(contentType)
	var b [64]byte
	out := append(b[:0], `{"successful_rows":`...)
	out = strconv.AppendInt(out, int64(n), 10)
	out = append(out, `,"quarantined_rows":0}`...)
	ctx.Response.SetBody(out)
}
