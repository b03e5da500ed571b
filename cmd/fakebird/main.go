// Command fakebird runs internal/fakebird, the fake Tinybird Events API, as
// a process for load runs. By default it only counts rows (-no-validate), so
// the upstream costs little next to the proxy under test.
//
// Besides POST /v0/events it serves GET /stats, {"rows":N,"requests":M,
// "status":{"202":M}}, so a script can see how many rows arrived. On SIGINT
// or SIGTERM it prints the same figures and exits 0.
//
//	fakebird -addr 127.0.0.1:8091 -tokens tb_secret
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
)

type stats struct {
	Rows     int            `json:"rows"`
	Requests int            `json:"requests"`
	Status   map[string]int `json:"status"`
}

func main() { os.Exit(run()) }

// run returns the exit status.
func run() int {
	addr := flag.String("addr", "127.0.0.1:8091", "address to listen on")
	noValidate := flag.Bool("no-validate", true, "count rows without validating or keeping them")
	tokens := flag.String("tokens", "", "comma-separated accepted tokens; empty accepts any non-empty token")
	maxRequests := flag.Int("max-requests", 1000, "request records to keep (counters see every request)")
	flag.Parse()

	opts := fakebird.Options{
		// fakebird.Start always listens; its own listener stays idle on a
		// free loopback port and the handler is served below on -addr,
		// wrapped to add /stats.
		Addr:        "127.0.0.1:0",
		NoValidate:  *noValidate,
		MaxRequests: *maxRequests,
	}
	for t := range strings.SplitSeq(*tokens, ",") {
		if t = strings.TrimSpace(t); t != "" {
			opts.Tokens = append(opts.Tokens, t)
		}
	}
	fb, err := fakebird.Start(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakebird:", err)
		return 1
	}
	defer fb.Close()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakebird:", err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(current(fb))
	})
	mux.Handle("/", fb)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}

	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "fakebird: listening on %s (no-validate=%v)\n", ln.Addr(), *noValidate)

	status := 0
	select {
	case <-sigCtx.Done():
	case err := <-served:
		fmt.Fprintln(os.Stderr, "fakebird:", err)
		status = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "fakebird: shutdown:", err)
	}
	st := current(fb)
	b, _ := json.Marshal(st.Status)
	fmt.Printf("fakebird: rows=%d requests=%d status=%s\n", st.Rows, st.Requests, b)
	return status
}

func current(fb *fakebird.Server) stats {
	st := stats{Rows: fb.RowCount(), Requests: fb.RequestCount(), Status: map[string]int{}}
	for code, n := range fb.StatusCounts() {
		st.Status[strconv.Itoa(code)] = n
	}
	return st
}
