package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
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
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/internal/ndjson"
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
	_, fileSink := cfg.FileSinkDir()
	if _, clickhouse := cfg.ClickHouse(); !fileSink && !clickhouse && !cfg.ProxyTokenMode() {
		fmt.Fprintln(os.Stderr, "tbproxy replay: set TINYBIRD_TOKEN to the token to write with (dead letters never store tokens)")
		return 2
	}
	// The whole file is checked before anything is sent: a replay that
	// stopped half way on a bad line could not be rerun without
	// duplicating what it had sent.
	if n, err := checkFile(file, int(cfg.MaxBodyBytes)); err != nil {
		fmt.Fprintf(os.Stderr, "tbproxy replay: nothing was sent: %v\n", err)
		return 2
	} else if n == 0 {
		fmt.Fprintf(os.Stderr, "tbproxy replay: %s holds no rows\n", file)
		return 0
	}
	log := newLogger(cfg)
	up, err := newUpstream(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 2
	}
	buf := buffer.New(buffer.Options{MaxEvents: cfg.BufferSize, MaxBytes: int(cfg.BufferMaxBytes)})
	opts := flusherOptions(cfg, up)    // no DeadLetters: never append to the file being replayed
	opts.DrainTimeout = 24 * time.Hour // replay until done, or until interrupted
	reg := prometheus.NewRegistry()
	fl, err := flusher.New(buf, opts, reg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	flushCtx, stopFlusher := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fl.Run(flushCtx) }()

	rows, readErr := feed(sigCtx, buf, buffer.Key{Datasource: *ds}, file, int(cfg.MaxBodyBytes))
	buf.Close()
	stopFlusher()
	var runErr error
	select {
	case runErr = <-done:
	case <-sigCtx.Done():
		log.Error("replay interrupted; the file is unchanged, so it can be replayed again (rows already sent would be duplicated)")
		return 1
	}
	dropped := counterSum(reg, "tbproxy_dropped_events_total")
	// Quarantined rows were accepted by upstream too; replaying them again
	// would not change that.
	delivered := counterSum(reg, "tbproxy_delivered_events_total") + counterSum(reg, "tbproxy_quarantined_events_total")
	log.Info("replay finished", "file", file, "datasource", *ds, "rows", rows,
		"delivered", delivered, "dropped", dropped)
	if readErr != nil || runErr != nil || dropped > 0 || int(delivered) < rows {
		log.Error("replay incomplete; the file is unchanged", "read_err", readErr, "err", runErr)
		return 1
	}
	return 0
}

// eachRow calls fn with every non-blank line of file, numbered from 1, in
// a buffer fn must not keep; lines longer than maxLine are an error.
func eachRow(file string, maxLine int, fn func(n int, line []byte) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxLine+1)
	n := 0
	for sc.Scan() {
		n++
		if line := sc.Bytes(); len(bytes.TrimSpace(line)) > 0 {
			if len(line) > maxLine {
				return fmt.Errorf("%s line %d is longer than MAX_BODY_BYTES (%d bytes)", file, n, maxLine)
			}
			if err := fn(n, line); err != nil {
				return err
			}
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return fmt.Errorf("%s line %d is longer than MAX_BODY_BYTES (%d bytes)", file, n+1, maxLine)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return nil
}

// checkFile reads file through and returns how many rows it holds, or the
// first line that is longer than maxLine or not one JSON object (blank
// lines are skipped, as in a request).
func checkFile(file string, maxLine int) (int, error) {
	rows := 0
	err := eachRow(file, maxLine, func(n int, line []byte) error {
		if !ndjson.Object(line) {
			return fmt.Errorf("%s line %d is not a JSON object", file, n)
		}
		rows++
		return nil
	})
	return rows, err
}

// feed puts every line of file into buf under key, waiting while the buffer
// is full. It returns how many rows it stored.
func feed(ctx context.Context, buf *buffer.Buffer, key buffer.Key, file string, maxLine int) (int, error) {
	var lines [][]byte
	rows := 0
	put := func() error {
		for {
			err := buf.Put(key, lines)
			if !errors.Is(err, buffer.ErrFull) {
				if err == nil {
					rows += len(lines)
				}
				lines = lines[:0]
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond): // a CLI waiting for room; nothing to wake it sooner
			}
		}
	}
	err := eachRow(file, maxLine, func(_ int, line []byte) error {
		lines = append(lines, bytes.Clone(line)) // byte-identical; Scan reuses its buffer
		if len(lines) == 1000 {
			return put()
		}
		return nil
	})
	if err != nil {
		return rows, err
	}
	return rows, put()
}

// counterSum adds up every series of a counter in reg.
func counterSum(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
