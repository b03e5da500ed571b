package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/goccy/go-json"
	"github.com/tbproxy/tbproxy/console"
)

// status prints the console's stream table, the terminal twin of
// /-/status. The token comes from ADMIN_TOKEN, never a flag, so that it
// stays out of ps and shell history. Usage:
//
//	tbproxy status [-url URL] [-watch] [-interval 1s]
func status(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runStatus(ctx, args, os.Getenv, os.Stdout, os.Stderr)
}

// clearScreen moves the cursor home and clears the terminal, so that each
// -watch frame replaces the last.
const clearScreen = "\033[H\033[2J"

// runStatus is status with its environment, output and interruption passed
// in; it returns the exit status.
func runStatus(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("url", defaultStatusURL(getenv), "the proxy's console address (default from ADMIN_ADDR, else PORT)")
	watch := fs.Bool("watch", false, "redraw every interval until interrupted")
	interval := fs.Duration("interval", time.Second, "time between redraws with -watch")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 || *interval <= 0 {
		fmt.Fprintln(stderr, "usage: tbproxy status [-url URL] [-watch] [-interval 1s]  (the token: ADMIN_TOKEN)")
		return 2
	}
	endpoint, err := statusEndpoint(*base)
	if err != nil {
		fmt.Fprintln(stderr, "tbproxy status:", err)
		return 2
	}
	token := getenv("ADMIN_TOKEN")
	client := &http.Client{Timeout: 5 * time.Second}

	for frame := 0; ; frame++ {
		st, err := fetchStatus(ctx, client, endpoint, token)
		var out bytes.Buffer // a whole frame at once: no flicker, no half table
		switch {
		case ctx.Err() != nil:
			return 0 // interrupted: the normal end of -watch
		case err != nil && (!*watch || frame == 0 || errors.As(err, new(fatalStatusError))):
			// Not watching; or the first fetch failed (a wrong -url shows at
			// once, not as a retry loop); or a 401 or 404, which retrying
			// will not change.
			fmt.Fprintln(stderr, err)
			return 1
		case err != nil:
			// The proxy went away while watched (a restart?): say so, keep trying.
			fmt.Fprintf(&out, "%s%s  %v\n", clearScreen, time.Now().Format(time.TimeOnly), err)
		default:
			if *watch {
				fmt.Fprintf(&out, "%s%s  %s\n", clearScreen, time.Now().Format(time.TimeOnly), endpoint.Redacted())
			}
			if err := console.WriteTable(&out, st); err != nil {
				fmt.Fprintln(stderr, "tbproxy status:", err)
				return 1
			}
		}
		if _, err := stdout.Write(out.Bytes()); err != nil {
			return 1
		}
		if !*watch {
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(*interval):
		}
	}
}

// defaultStatusURL is where the console listens by the same environment
// the proxy reads: ADMIN_ADDR if set (the console moved to its own
// listener), else the main port. A wildcard host is reached on loopback.
func defaultStatusURL(getenv func(string) string) string {
	if addr := getenv("ADMIN_ADDR"); addr != "" {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "http://" + addr // not host:port; let the request say what is wrong
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		return "http://" + net.JoinHostPort(host, port)
	}
	port := getenv("PORT")
	if port == "" {
		port = "8080"
	}
	return "http://" + net.JoinHostPort("127.0.0.1", port)
}

// statusEndpoint is base's /-/api/streams; base may omit http://.
func statusEndpoint(base string) (*url.URL, error) {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-url %q is not an http(s) address", base)
	}
	u.Path += "/-/api/streams"
	return u, nil
}

// fatalStatusError is an answer retrying will not change: the wrong token,
// or no console at that address.
type fatalStatusError struct{ msg string }

func (e fatalStatusError) Error() string { return e.msg }

// fetchStatus GETs the console's JSON. Its errors are the messages to
// print; none holds the token.
func fetchStatus(ctx context.Context, client *http.Client, endpoint *url.URL, token string) (console.Status, error) {
	var st console.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint.String(), nil)
	if err != nil {
		return st, fmt.Errorf("tbproxy status: %w", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("tbproxy status: %w", err) // *url.Error: names the URL, redacts any password in it
	}
	defer resp.Body.Close()
	where := endpoint.Redacted()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized:
		hint := "set ADMIN_TOKEN"
		if token != "" {
			hint = "set ADMIN_TOKEN to the proxy's (this one was refused)"
		}
		return st, fatalStatusError{fmt.Sprintf("tbproxy status: 401 from %s: %s", where, hint)}
	case http.StatusNotFound:
		return st, fatalStatusError{fmt.Sprintf("tbproxy status: 404 from %s: the console is off: set ADMIN_TOKEN on the proxy (and ADMIN_ADDR if it moved)", where)}
	default:
		return st, fmt.Errorf("tbproxy status: %s from %s: %s", resp.Status, where, errorText(resp.Body))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&st); err != nil {
		return st, fmt.Errorf("tbproxy status: %s answered no status JSON: %v", where, err)
	}
	return st, nil
}

// errorText is the "error" of a JSON error answer, else the start of the
// body.
func errorText(body io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(body, 4096))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	if s := strings.TrimSpace(string(b)); len(s) <= 200 {
		return s
	}
	return string(b[:200]) + "…"
}
