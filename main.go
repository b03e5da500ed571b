// Command tbproxy is a Tinybird-compatible event ingestion proxy: clients
// post to it as they would to Tinybird's Events API, it answers at once,
// holds events in a bounded buffer and ships them upstream in large batches.
//
// main only wires the packages together; see README.md. Its files: this one
// (config → components → run → ordered shutdown), upstream.go, store.go,
// options.go, admin.go, signals.go, logger.go, dirs.go, and the subcommands
// replay.go, healthcheck.go, status.go and version.go.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/proxy"
	"golang.org/x/sync/errgroup"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "replay":
			os.Exit(replay(os.Args[2:]))
		case "healthcheck":
			os.Exit(healthcheck())
		case "version":
			os.Exit(printVersion())
		case "status":
			os.Exit(status(os.Args[2:]))
		case "hash-token":
			os.Exit(hashToken(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
		}
	}
	os.Exit(run())
}

// run builds the proxy from the environment and serves until a signal. It
// returns the exit status: 0 after a clean shutdown, 1 if acknowledged
// events were lost or the server failed, 2 for invalid configuration.
func run() int {
	cfg, err := config.Load(env.ToMap(os.Environ()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "tbproxy: invalid configuration:\n%v\n", err)
		return 2
	}
	log := newLogger(cfg)
	if err := checkWritableDirs(cfg); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	buf := buffer.New(bufferOptions(cfg))
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
	st, err := openStore(cfg, buf, dead, reg, log)
	if err != nil {
		return 1 // openStore logged which store could not be opened
	}
	adm, err := openAdmin(cfg, buf, fl, reg, log)
	if err != nil {
		log.Error("cannot listen", "admin_addr", cfg.AdminAddr, "err", err)
		return 1
	}
	named, set, err := loadClients(cfg, log)
	if err != nil {
		log.Error("cannot start: invalid CLIENTS_FILE", "err", err)
		return 2
	}
	idem, err := openIdempotency(cfg, reg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer idem.close(log)
	popts := proxyOptions(cfg, fl, st, reg)
	adm.serveInto(&popts)
	lim := newLimiter(cfg, reg)
	admitInto(&popts, cfg, set, lim, idem)
	srv, err := proxy.New(buf, popts, reg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	named.serveInto(srv)
	if err := st.shareLimits(lim, log); err != nil {
		log.Error("cannot start: sharing rate limits over NATS", "err", err)
		return 1
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.Port)))
	if err != nil {
		log.Error("cannot listen", "port", cfg.Port, "err", err)
		return 1
	}
	warnUnauthenticated(cfg, log)
	ver := readBuildVersion()
	log.Info("listening", "addr", ln.Addr().String(), "version", ver.Module, "revision", ver.Revision, "config", cfg)
	return serve(cfg, log, buf, fl, st, adm, named, srv, ln)
}

// answerGrace is how long past SHUTDOWN_TIMEOUT the server waits for
// requests the flusher has just answered to be written.
const answerGrace = 2 * time.Second

// serve runs the flusher, the store and the server on ln until a signal or
// a server failure, then shuts them down in reverse start order, and
// returns the exit status.
func serve(cfg config.Config, log *slog.Logger, buf *buffer.Buffer, fl *flusher.Flusher, st *store, adm *admin, named *namedClients, srv *proxy.Server, ln net.Listener) int {
	var hup func()
	if named != nil {
		hup = func() { named.reload("SIGHUP") }
	}
	sigCtx, stopSignals := handleSignals(log, hup)
	defer stopSignals()
	go named.watch(sigCtx, cfg.ClientsWatchInterval)
	// The flusher has its own context: it must keep shipping while the
	// server drains, and only then drain the buffer itself.
	flushCtx, stopFlusher := context.WithCancel(context.Background())
	defer stopFlusher()
	g, running := errgroup.WithContext(sigCtx) // ends at a signal, or when Serve fails
	var lost error                             // the flusher's: acknowledged events it could not deliver
	g.Go(func() error { lost = fl.Run(flushCtx); return nil })
	st.replay(log) // before serving: what an earlier run acknowledged goes first
	st.start()
	adm.start(log)
	g.Go(func() error { return srv.Serve(ln) })

	<-running.Done()
	status := 0
	if cause := context.Cause(running); cause != context.Cause(sigCtx) { // Serve failed first
		log.Error("server failed", "err", cause)
		status = 1
	} else {
		log.Info("shutting down", "signal", cause.Error(), "delay", cfg.ShutdownDelay.String(), "timeout", cfg.ShutdownTimeout.String())
	}
	// Reverse start order: stop taking traffic, close the buffer, then drain
	// it while idle connections close; both within one SHUTDOWN_TIMEOUT.
	srv.Drain()
	time.Sleep(cfg.ShutdownDelay)
	st.stopTaking(cfg.ShutdownTimeout, log)
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
	_ = g.Wait() // the flusher and Serve have returned; Serve's error was logged above
	if lost != nil {
		log.Error("shutdown lost events", "err", lost)
		status = 1
	}
	st.close(log)
	adm.close()
	log.Info("stopped", "exit_status", status)
	return status
}
