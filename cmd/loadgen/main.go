// Command loadgen posts NDJSON events to a Tinybird-compatible Events API
// (the proxy, or cmd/ceiling) over N keep-alive connections and reports
// throughput, status counts and exact latency percentiles.
//
// Each connection has its own goroutine, request objects and body; a body
// is built once from templates and only its event ids are rewritten per
// request, so the tool costs little next to the server it measures.
//
// With -rate, every connection follows a fixed schedule and latency is
// measured from the scheduled send time, not the actual one, so a stalled
// server is charged for the requests it delayed (no coordinated omission).
//
// Typical use:
//
//	loadgen -url http://127.0.0.1:8080 -conns 64 -events 10 -duration 10s -json
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

type config struct {
	url         string
	conns       int
	events      int
	duration    time.Duration
	requests    int64
	rate        float64
	gzip        bool
	datasources int
	token       string
	acked       string
	warmup      time.Duration
	timeout     time.Duration
	json        bool
}

func main() {
	var c config
	flag.StringVar(&c.url, "url", "http://127.0.0.1:8080", "proxy base URL (scheme and host; /v0/events is appended)")
	flag.IntVar(&c.conns, "conns", 64, "concurrent keep-alive connections, one goroutine each")
	flag.IntVar(&c.events, "events", 1, "events (NDJSON lines) per request")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "how long to send after the warm-up (ignored with -requests)")
	flag.Int64Var(&c.requests, "requests", 0, "send this many requests in total (warm-up included), then stop; 0 = use -duration")
	flag.Float64Var(&c.rate, "rate", 0, "requests per second over all connections on a fixed schedule; 0 = as fast as possible")
	flag.BoolVar(&c.gzip, "gzip", false, "gzip each request body (Content-Encoding: gzip)")
	flag.IntVar(&c.datasources, "datasources", 4, "round-robin over this many datasources: load_0, load_1, ...")
	flag.StringVar(&c.token, "token", "", "send Authorization: Bearer <token>")
	flag.StringVar(&c.acked, "acked", "", "append the id of every acknowledged (2xx) event to this file, one per line")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "initial period excluded from the statistics (default 0 with -requests)")
	flag.DurationVar(&c.timeout, "timeout", 10*time.Second, "read and write timeout of each request")
	flag.BoolVar(&c.json, "json", false, "print one JSON object on stdout (the human summary goes to stderr)")
	flag.Parse()
	warmupSet := false
	flag.Visit(func(f *flag.Flag) { warmupSet = warmupSet || f.Name == "warmup" })
	if c.requests > 0 && !warmupSet {
		c.warmup = 0 // a fixed number of requests is measured whole
	}
	if err := c.check(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	rep, err := run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	if c.json {
		rep.printHuman(os.Stderr)
		enc := json.NewEncoder(os.Stdout)
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	} else {
		rep.printHuman(os.Stdout)
	}
}

func (c *config) check() error {
	switch {
	case c.conns < 1 || c.conns > 9999:
		return errors.New("-conns must be between 1 and 9999")
	case c.events < 1:
		return errors.New("-events must be at least 1")
	case c.datasources < 1:
		return errors.New("-datasources must be at least 1")
	case c.requests < 0 || c.rate < 0 || c.warmup < 0 || c.timeout <= 0:
		return errors.New("-requests, -rate and -warmup must not be negative, -timeout must be positive")
	case c.requests == 0 && c.duration <= 0:
		return errors.New("-duration must be positive (or give -requests)")
	}
	u, err := url.Parse(c.url)
	if err != nil {
		return fmt.Errorf("-url: %w", err)
	}
	if u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("-url: want http://host:port, got %q", c.url)
	}
	return nil
}

// runState is shared by the workers of one run.
type runState struct {
	cfg       config
	client    *fasthttp.HostClient
	uris      []string
	start     time.Time
	warmEnd   time.Time
	end       time.Time // zero with -requests
	issued    atomic.Int64
	interval  time.Duration // per connection, with -rate
	stop      atomic.Bool
	ackMu     sync.Mutex
	ackFile   *os.File
	ackErr    error
	okBody    []byte // the exact 2xx body expected
	runID     string
	eventSize int
}

func run(c config) (*report, error) {
	u, _ := url.Parse(c.url)
	var rid [4]byte
	if _, err := rand.Read(rid[:]); err != nil {
		return nil, err
	}
	s := &runState{
		cfg:   c,
		runID: hex.EncodeToString(rid[:]),
		client: &fasthttp.HostClient{
			Addr:                     u.Host,
			Name:                     "loadgen",
			MaxConns:                 c.conns,
			MaxIdleConnDuration:      time.Minute,
			ReadTimeout:              c.timeout,
			WriteTimeout:             c.timeout,
			MaxConnWaitTimeout:       c.timeout,
			ReadBufferSize:           4 << 10,
			WriteBufferSize:          64 << 10,
			NoDefaultUserAgentHeader: true,
			MaxResponseBodySize:      1 << 20,
		},
		okBody: fmt.Appendf(nil, `{"successful_rows":%d,"quarantined_rows":0}`, c.events),
	}
	base := c.url
	for len(base) > 0 && base[len(base)-1] == '/' {
		base = base[:len(base)-1]
	}
	for i := range c.datasources {
		s.uris = append(s.uris, fmt.Sprintf("%s/v0/events?name=load_%d", base, i))
	}
	if c.acked != "" {
		f, err := os.OpenFile(c.acked, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		s.ackFile = f
	}
	if c.rate > 0 {
		s.interval = time.Duration(float64(c.conns) / c.rate * float64(time.Second))
		if s.interval <= 0 {
			return nil, errors.New("-rate too high for the number of connections")
		}
	}

	// Build every body before the clock starts.
	workers := make([]*worker, c.conns)
	for i := range workers {
		workers[i] = newWorker(s, i)
	}
	total := 0
	for _, w := range workers {
		total += len(w.body.buf)
	}
	s.eventSize = total / (c.conns * c.events)

	// SIGINT/SIGTERM end the run early but still print the report.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if _, ok := <-sig; ok {
			s.stop.Store(true)
		}
	}()

	s.start = time.Now()
	s.warmEnd = s.start.Add(c.warmup)
	if c.requests == 0 {
		s.end = s.warmEnd.Add(c.duration)
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(w.run)
	}
	wg.Wait()
	if s.ackErr != nil {
		return nil, fmt.Errorf("-acked: %w", s.ackErr)
	}
	return newReport(s, workers), nil
}

// writeAcked appends ids to the -acked file; it is called with large chunks.
func (s *runState) writeAcked(ids []byte) {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	if s.ackErr == nil {
		_, s.ackErr = s.ackFile.Write(ids)
	}
}
