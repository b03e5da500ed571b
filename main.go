// Command tbproxy is a Tinybird-compatible event ingestion proxy: clients
// post to it as they would to Tinybird's Events API, it answers at once,
// holds events in a bounded buffer and ships them upstream in large batches.
//
// main only wires the packages together; see README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/internal/logthrottle"
	"github.com/tbproxy/tbproxy/proxy"
	"github.com/tbproxy/tbproxy/spool"
	"github.com/tbproxy/tbproxy/upstream/filesink"
	"github.com/tbproxy/tbproxy/upstream/tinybird"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "replay":
			os.Exit(replay(os.Args[2:]))
		case "healthcheck":
			os.Exit(healthcheck())
		}
	}
	os.Exit(run())
}

// run returns the exit status: 0 after a clean shutdown, 1 if acknowledged
// events were lost or the server failed, 2 for invalid configuration.
func run() int {
	cfg, err := config.Load(env.ToMap(os.Environ()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "tbproxy: invalid configuration:\n%v\n", err)
		return 2
	}
	log := newLogger(cfg)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	buf := buffer.New(buffer.Options{MaxEvents: cfg.BufferSize, MaxBytes: int(cfg.BufferMaxBytes),
		MaxDatasources: cfg.MaxDatasources, MaxUnverifiedTokens: cfg.MaxUnverifiedTokens})
	up, err := newUpstream(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 2
	}
	// One dead-letter writer for the flusher and the queue; with
	// DEAD_LETTER_DIR unset it is off, its metrics exported at zero.
	dead, err := deadletter.New(cfg.DeadLetterDir, reg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	fopts := flusherOptions(cfg, up)
	fopts.DeadLetters = dead
	fl, err := flusher.New(buf, fopts, reg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	popts := proxyOptions(cfg, fl, reg)
	var sp *spool.Spool
	if cfg.SpoolDir != "" {
		if sp, err = openSpool(cfg, buf, reg, log); err != nil {
			log.Error("cannot open the spool", "dir", cfg.SpoolDir, "err", err)
			return 1
		}
		popts.Store = sp
	}
	sq, err := openQueue(cfg, buf, dead, reg, log)
	if err != nil {
		log.Error("cannot open the queue", "err", err)
		return 1
	}
	if sq != nil {
		popts.Store = sq.q
		popts.Ready = append(popts.Ready, sq.q.Ready)
		popts.IgnoreBufferFill = true
	}
	srv, err := proxy.New(buf, popts, reg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.Port)))
	if err != nil {
		log.Error("cannot listen", "port", cfg.Port, "err", err)
		return 1
	}
	if cfg.ProxyTokenMode() && len(cfg.AuthorizationTokens) == 0 {
		log.Warn("ALLOW_UNAUTHENTICATED=true: anyone who can reach this proxy can write events and read the rest of the API with its TINYBIRD_TOKEN")
	}
	if _, ch := cfg.ClickHouse(); ch && len(cfg.AuthorizationTokens) == 0 {
		log.Warn("ALLOW_UNAUTHENTICATED=true: anyone who can reach this proxy can write events into ClickHouse")
	}
	log.Info("listening", "addr", ln.Addr().String(), "config", cfg)

	sigCtx, stopSignals := handleSignals(log)
	defer stopSignals()
	// The flusher has its own context: it must keep shipping while the
	// server drains, and only then drain the buffer itself.
	flushCtx, stopFlusher := context.WithCancel(context.Background())
	defer stopFlusher()
	flushed := make(chan error, 1)
	go func() { flushed <- fl.Run(flushCtx) }()
	if sp != nil { // before serving: what an earlier run acknowledged goes first
		n, err := sp.Replay(sigCtx)
		log.Info("spool replayed", "events", n, "err", err)
	}
	sq.start()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	status := 0
	select {
	case <-sigCtx.Done():
		log.Info("shutting down", "signal", context.Cause(sigCtx).Error(), "delay", cfg.ShutdownDelay.String(), "timeout", cfg.ShutdownTimeout.String())
	case err := <-served:
		log.Error("server failed", "err", err)
		status = 1
	}
	// Reverse start order: stop taking traffic, close the buffer, then drain
	// it while idle connections close; both within one SHUTDOWN_TIMEOUT.
	srv.Drain()
	time.Sleep(cfg.ShutdownDelay)
	sq.stopTaking()
	buf.Close()
	stopFlusher() // nothing can be added any more: start delivering what is held
	// The flusher answers every held wait=true request by SHUTDOWN_TIMEOUT
	// (delivered, refused, kept, or not written); the server waits a little
	// longer, so those answers are written before connections close.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout+answerGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("connections still open at shutdown", "err", err)
	}
	if err := <-flushed; err != nil {
		log.Error("shutdown lost events", "err", err)
		status = 1
	}
	sq.close(log)
	if sp != nil {
		if err := sp.Close(); err != nil {
			log.Error("closing the spool", "err", err)
		}
	}
	log.Info("stopped", "exit_status", status)
	return status
}

func proxyOptions(cfg config.Config, fl *flusher.Flusher, reg *prometheus.Registry) proxy.Options {
	_, fileSink := cfg.FileSinkDir()
	_, clickhouse := cfg.ClickHouse() // writes with its own user: no client tokens go upstream, no API to pass through
	var pass proxy.PassthroughOptions
	if cfg.Passthrough && !fileSink && !clickhouse {
		pass = proxy.PassthroughOptions{BaseURL: cfg.TinybirdBaseURL, Token: cfg.TinybirdToken, Timeout: cfg.UpstreamTimeout,
			// An open proxy must not let anyone truncate datasources with TINYBIRD_TOKEN.
			ReadOnly: cfg.ProxyTokenMode() && len(cfg.AuthorizationTokens) == 0}
	}
	var upstreamHealthy func() bool
	if cfg.ReadyRequiresUpstream {
		upstreamHealthy = fl.Healthy
	}
	return proxy.Options{
		MaxBodyBytes:       int(cfg.MaxBodyBytes),
		RequestMemoryBytes: int(cfg.RequestMemoryBytes),
		PassThrough:        cfg.ClientTokensUpstream(),
		Tokens:             cfg.AuthorizationTokens,
		HighWatermark:      cfg.BufferHighWatermark,
		WaitTimeout:        cfg.WaitTimeout,
		Passthrough:        pass,
		CORSOrigins:        cfg.CORSAllowedOrigins,
		MaxDatasources:     cfg.MaxDatasources,
		MaxConnections:     cfg.MaxConnections,
		MaxHeaderBytes:     int(cfg.MaxHeaderBytes),
		MaxTokenBytes:      int(cfg.MaxTokenBytes),
		UpstreamHealthy:    upstreamHealthy,
		ReadTimeout:        cfg.ReadTimeout,
		WriteTimeout:       cfg.WriteTimeout,
		IdleTimeout:        cfg.IdleTimeout,
		Gatherer:           reg,
	}
}

func openSpool(cfg config.Config, buf *buffer.Buffer, reg prometheus.Registerer, log *slog.Logger) (*spool.Spool, error) {
	mode, err := spool.ParseFsync(cfg.SpoolFsync)
	if err != nil {
		return nil, err
	}
	return spool.Open(buf, spool.Options{
		Dir:           cfg.SpoolDir,
		SegmentBytes:  int64(cfg.SpoolSegmentBytes),
		MaxBytes:      int64(cfg.SpoolMaxBytes),
		Fsync:         mode,
		FsyncInterval: cfg.SpoolFsyncInterval,
	}, reg, log)
}

// flusherOptions are the flusher's options from cfg, without dead letters:
// run gives the flusher the writer it shares with the queue, and replay
// none.
func flusherOptions(cfg config.Config, up flusher.Sender) flusher.Options {
	return flusher.Options{
		Upstream:      up,
		BatchRows:     cfg.BatchSize,
		BatchBytes:    int(cfg.BatchMaxBytes),
		FlushInterval: time.Duration(cfg.FlushInterval),
		Concurrency:   cfg.UpstreamConcurrency,
		MinBackoff:    cfg.RetryMinBackoff,
		MaxBackoff:    cfg.RetryMaxBackoff,
		DrainTimeout:  cfg.ShutdownTimeout,
		TokenDenyTTL:  cfg.TokenDenyTTL,
		// The spool keeps what a shutdown could not deliver, for the next
		// start, and the queue for another replica; dead-lettering it too
		// would deliver it twice.
		RetainOnShutdown: cfg.SpoolDir != "" || queueOn(cfg),
	}
}

// queueOn reports whether the JetStream queue is configured: QUEUE_URL
// names at least one server (QUEUE_URL="," does not).
func queueOn(cfg config.Config) bool {
	_, on := cfg.QueueURLs()
	return on
}

func newUpstream(cfg config.Config, log *slog.Logger) (flusher.Sender, error) {
	if dir, ok := cfg.FileSinkDir(); ok {
		return filesink.New(dir)
	}
	if ch, ok := cfg.ClickHouse(); ok {
		return newClickHouse(cfg, ch, log)
	}
	return tinybird.New(tinybird.Options{
		BaseURL:   cfg.TinybirdBaseURL,
		Token:     cfg.TinybirdToken,
		Wait:      cfg.UpstreamWait,
		Timeout:   cfg.UpstreamTimeout,
		MaxConns:  cfg.UpstreamConcurrency * 2,
		UserAgent: "tbproxy",
	})
}

// answerGrace is how long past SHUTDOWN_TIMEOUT the server waits for
// requests the flusher has just answered to be written.
const answerGrace = 2 * time.Second

// handleSignals returns a context that ends, with the signal as its cause,
// on the first SIGTERM, SIGINT or SIGQUIT: each starts the graceful
// shutdown (Go's default would exit at once, and for SIGQUIT dump stacks,
// losing the buffer). Later ones are logged and ignored: the drain is
// already bounded by SHUTDOWN_TIMEOUT, and SIGKILL remains for the
// impatient. SIGHUP (sent by terminals and some supervisors), SIGUSR1 and
// SIGUSR2 are logged and ignored: nothing is reloadable, and none of them
// may end the process without a drain. stop undoes it all.
func handleSignals(log *slog.Logger) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				switch {
				case s == syscall.SIGHUP || s == syscall.SIGUSR1 || s == syscall.SIGUSR2:
					log.Warn("signal ignored: nothing to reload; send SIGTERM to shut down", "signal", s.String())
				case ctx.Err() != nil:
					log.Warn("signal ignored: already shutting down, within SHUTDOWN_TIMEOUT", "signal", s.String())
				default:
					cancel(errors.New(s.String()))
				}
			}
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}

// newLogger logs to stderr; a warning repeated more than 5 times in 10s is
// held back and counted, so an outage never becomes a log storm.
func newLogger(cfg config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, opts)
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	return slog.New(logthrottle.New(h, 10*time.Second, 5))
}

// healthcheck is for container HEALTHCHECKs in images without curl: it
// exits 0 when GET /health on this machine's PORT answers 200.
func healthcheck() int {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort("127.0.0.1", port) + "/health")
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "healthcheck: /health answered", resp.Status)
		return 1
	}
	return 0
}
