package main

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/console"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/proxy"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// admin is the operator console (ADMIN_TOKEN) and the separate listener
// for it and /metrics (ADMIN_ADDR); either part may be off (nil).
type admin struct {
	console *console.Console
	srv     *fasthttp.Server
	ln      net.Listener

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// openAdmin builds the console if ADMIN_TOKEN is set, and listens on
// ADMIN_ADDR if it is set.
func openAdmin(cfg config.Config, buf *buffer.Buffer, fl *flusher.Flusher, reg *prometheus.Registry, log *slog.Logger) (*admin, error) {
	var a admin
	if cfg.AdminToken != "" {
		a.console = console.New(console.Options{Token: cfg.AdminToken, Buffer: buf, Flusher: fl, Gatherer: reg, Log: log})
	}
	if cfg.AdminAddr != "" {
		ln, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			return nil, err
		}
		a.ln = ln
		metrics := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		a.srv = &fasthttp.Server{
			Handler:      console.AdminHandler(a.console, metrics, log),
			Name:         "tbproxy",
			ReadTimeout:  cfg.ReadTimeout,
			WriteTimeout: cfg.WriteTimeout,
			IdleTimeout:  cfg.IdleTimeout,
			Concurrency:  64, // operators and a scraper, not clients
			Logger:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
	}
	return &a, nil
}

// serveInto routes the public port's /-/ to the console, unless ADMIN_ADDR
// serves it (and /metrics) instead.
func (a *admin) serveInto(o *proxy.Options) {
	switch {
	case a.srv != nil:
		o.NoMetrics = true
	case a.console != nil:
		o.Admin = a.console.Handler
	}
}

// start runs the console's sampler and the ADMIN_ADDR server.
func (a *admin) start(log *slog.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	a.stop = cancel
	if a.console != nil {
		a.wg.Go(func() { a.console.Run(ctx) })
	}
	if a.srv != nil {
		log.Info("admin listening", "addr", a.ln.Addr().String(), "console", a.console != nil)
		a.wg.Go(func() {
			if err := a.srv.Serve(a.ln); err != nil {
				log.Error("admin server failed", "err", err)
			}
		})
	}
}

// close stops both, last at shutdown, so /metrics is scraped through it.
func (a *admin) close() {
	if a.stop == nil {
		return
	}
	a.stop()
	if a.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = a.srv.ShutdownWithContext(ctx)
	}
	a.wg.Wait()
}
