package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
)

// TestE2ESignals sends every signal a supervisor or a terminal may send to
// a proxy holding acknowledged events behind a slow upstream. SIGHUP,
// SIGUSR1 and SIGUSR2 are logged and change nothing; SIGTERM, SIGINT and
// SIGQUIT start the graceful drain, and a second SIGTERM during it does not
// cut it short: the process exits 0 with every acknowledged event upstream.
// (SIGHUP used to kill the process at once, losing half the buffer.)
func TestE2ESignals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sigs []syscall.Signal // sent in order, each once the previous one was handled
	}{
		{"HUP then TERM", []syscall.Signal{syscall.SIGHUP, syscall.SIGTERM}},
		{"USR1 and USR2 then TERM", []syscall.Signal{syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM}},
		{"INT", []syscall.Signal{syscall.SIGINT}},
		{"QUIT", []syscall.Signal{syscall.SIGQUIT}},
		{"TERM twice", []syscall.Signal{syscall.SIGTERM, syscall.SIGTERM}},
		{"TERM then HUP", []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
			fb.SetFault(fakebird.Always(fakebird.Response{Delay: 1500 * time.Millisecond})) // slow, then normal
			p := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken,
				"AUTHORIZATION_TOKEN": clientToken, "FLUSH_INTERVAL": "100", "SHUTDOWN_TIMEOUT": "20s"})
			client := newClient(true)
			var acked []event
			for i := range 40 {
				pr := post{ds: "signals", token: clientToken, lines: []string{fmt.Sprintf(`{"seq":%d}`, i)}}
				pr.mustAccept(t, client, p.base)
				acked = append(acked, event{pr.ds, pr.lines[0]})
			}
			client.CloseIdleConnections()
			shutting := false
			for _, s := range tc.sigs {
				p.signal(s)
				switch {
				case s == syscall.SIGHUP || s == syscall.SIGUSR1 || s == syscall.SIGUSR2:
					p.waitLog(`"signal":"` + s.String() + `"`)
					if !shutting {
						res, err := http.Get(p.base + "/health")
						if err != nil || res.StatusCode != 200 {
							t.Fatalf("after %s: /health got %v %v; want 200", s, res, err)
						}
						res.Body.Close()
					}
				case shutting:
					p.waitLog("signal ignored: already shutting down")
				default:
					shutting = true
					p.waitLog(`"msg":"shutting down","signal":"` + s.String() + `"`)
				}
			}
			if got := p.exitStatus(30 * time.Second); got != 0 {
				t.Fatalf("exit status %d; want 0", got)
			}
			assertDelivered(t, fb.Rows(), acked, nil, upstreamToken)
		})
	}
}

// TestE2EHeldRequestsAnsweredAtShutdown: wait=true requests held when the
// drain runs out of time all get an answer before the connections close,
// and the answer is the truth: with a spool, the rows are kept and will be
// delivered; without, they were not written or may have been.
func TestE2EHeldRequestsAnsweredAtShutdown(t *testing.T) {
	t.Parallel()
	for _, spool := range []bool{false, true} {
		t.Run(fmt.Sprintf("spool %v", spool), func(t *testing.T) {
			t.Parallel()
			fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
			fb.SetFault(fakebird.Always(fakebird.Response{Status: 500}))
			env := map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken,
				"AUTHORIZATION_TOKEN": clientToken, "FLUSH_INTERVAL": "50", "SHUTDOWN_TIMEOUT": "2s", "WAIT_TIMEOUT": "60s",
				"RETRY_MIN_BACKOFF": "50ms", "RETRY_MAX_BACKOFF": "200ms"}
			if spool {
				env["SPOOL_DIR"] = t.TempDir()
			}
			p := startProxy(t, env)
			answers := make(chan string, 10)
			for i := range 10 {
				go func() {
					r, err := post{ds: "held", token: clientToken, wait: true, lines: []string{fmt.Sprintf(`{"i":%d}`, i)}}.send(newClient(false), p.base)
					if err != nil {
						answers <- "no answer: " + err.Error()
						return
					}
					answers <- fmt.Sprintf("%d %s", r.status, r.body)
				}()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := fb.WaitRequests(ctx, 2); err != nil { // the rows are being retried
				t.Fatal(err)
			}
			p.sigterm()
			for range 10 {
				a := <-answers
				switch {
				case strings.HasPrefix(a, "no answer"):
					t.Errorf("a held client got %s", a)
				case spool && !(strings.HasPrefix(a, "503 ") && strings.Contains(a, "they are kept and will be delivered")):
					t.Errorf("with the spool, a held client got %s; want 503 saying the rows are kept", a)
				case !spool && !(strings.HasPrefix(a, "503 ") && strings.Contains(a, "written")):
					t.Errorf("without the spool, a held client got %s; want 503 saying whether they were written", a)
				}
			}
			p.exitStatus(30 * time.Second)
		})
	}
}
