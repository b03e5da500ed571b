package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/flusher"
	"golang.org/x/sync/errgroup"
)

// replay sends a dead-letter file (or any NDJSON file) through the normal
// upstream path, configured by the same environment variables as the
// server, and reports what was delivered. It writes no dead letters of its
// own, so the file it reads is never appended to; what fails again is logged
// and counted, and the exit status is 1. Usage:
//
//	tbproxy replay [-datasource NAME] FILE
func replay(args []string) int {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	ds := fs.String("datasource", "", "datasource to send to (default: the file name without .ndjson)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: tbproxy replay [-datasource NAME] FILE")
		return 2
	}
	file := fs.Arg(0)
	if *ds == "" {
		*ds = strings.TrimSuffix(filepath.Base(file), ".ndjson")
	}
	if !buffer.ValidDatasource(*ds) {
		// A name over 242 bytes is stored shortened, with a '-' and a hash:
		// the whole name is in the .errors.jsonl records beside the file.
		fmt.Fprintf(os.Stderr, "tbproxy replay: %q is not a datasource name (letters, digits and underscores, at most 255); "+
			"name it with -datasource (a shortened file's records in .errors.jsonl hold the whole name)\n", *ds)
		return 2
	}
	environ := env.ToMap(os.Environ())
	if _, ok := environ["ALLOW_UNAUTHENTICATED"]; !ok {
		environ["ALLOW_UNAUTHENTICATED"] = "true" // replay serves no clients
	}
	cfg, err := config.Load(environ)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tbproxy replay: invalid configuration:\n%v\n", err)
		return 2
	}
	if cfg.ClientTokensUpstream() {
		fmt.Fprintln(os.Stderr, "tbproxy replay: set TINYBIRD_TOKEN to the token to write with (dead letters never store tokens)")
		return 2
	}
	if n, err := deadletter.CheckFile(file, int(cfg.MaxBodyBytes)); err != nil {
		fmt.Fprintf(os.Stderr, "tbproxy replay: nothing was sent: %v\n", err)
		return 2
	} else if n == 0 {
		fmt.Fprintf(os.Stderr, "tbproxy replay: %s holds no rows\n", file)
		return 0
	}
	return replayFile(cfg, file, buffer.Key{Datasource: *ds})
}

// replayFile sends file's rows to key through a buffer and a flusher of
// their own, and returns replay's exit status.
func replayFile(cfg config.Config, file string, key buffer.Key) int {
	log := newLogger(cfg)
	up, err := newUpstream(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 2
	}
	buf := buffer.New(buffer.Options{MaxEvents: cfg.BufferSize, MaxBytes: int(cfg.BufferMaxBytes)})
	opts := flusherOptions(cfg, up)    // no DeadLetters: never append to the file being replayed
	opts.DrainTimeout = 24 * time.Hour // replay until done, or until interrupted
	fl, err := flusher.New(buf, opts, prometheus.NewRegistry(), log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	flushCtx, stopFlusher := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return fl.Run(flushCtx) })

	sent, readErr := deadletter.Feed(sigCtx, buf, key, file, int(cfg.MaxBodyBytes))
	buf.Close()
	stopFlusher()
	if sent.Wait(sigCtx) != nil {
		log.Error("replay interrupted; the file is unchanged, so it can be replayed again (rows already sent would be duplicated)")
		return 1
	}
	runErr := g.Wait() // at once: every row's outcome is known, and the buffer is closed
	out := sent.Outcome()
	log.Info("replay finished", "file", file, "datasource", key.Datasource, "rows", out.Rows,
		"delivered", out.Delivered, "dropped", out.Dropped)
	if readErr != nil || runErr != nil || out.Dropped > 0 || out.Delivered < out.Rows {
		log.Error("replay incomplete; the file is unchanged", "read_err", readErr, "err", runErr)
		return 1
	}
	return 0
}
