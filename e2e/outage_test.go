package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// outageRSSLimit bounds the proxy's peak RSS while it holds the outage's
// 120,000 events of ~1 KB on disk with a 10,000-event buffer: memory
// follows the buffer (~10 MB of rows), not the backlog (~110 MB of rows,
// more than the limit on its own).
const outageRSSLimit = 96 << 20

// TestE2ESpoolOutageEndurance: with SPOOL_DIR, an upstream outage fills the
// disk instead of refusing clients once the buffer is full: 120,000 events
// in 100-event requests are all accepted with a 10,000-event buffer, memory
// stays bounded, /ready stays ready, and the metrics show the backlog; once
// upstream is back, every acknowledged event is delivered exactly once,
// byte-identical. The kill variant kills the proxy with SIGKILL in the
// middle of the outage and restarts it on the same directory: still
// nothing acknowledged is lost or doubled.
func TestE2ESpoolOutageEndurance(t *testing.T) {
	for _, kill := range []bool{false, true} {
		t.Run(map[bool]string{false: "outage", true: "kill -9 mid-outage"}[kill], func(t *testing.T) {
			t.Parallel()
			fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
			fb.Down()
			dir := t.TempDir()
			env := func() map[string]string {
				return map[string]string{
					"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
					"SPOOL_DIR": dir, "SPOOL_SEGMENT_BYTES": "1MiB", "BUFFER_SIZE": "10000",
					"FLUSH_INTERVAL": "200", "RETRY_MAX_BACKOFF": "500ms", "SHUTDOWN_TIMEOUT": "30s",
				}
			}
			const clients, requests, perRequest = 8, 150, 100 // 120,000 events
			var (
				mu    sync.Mutex
				acked []event
				maybe = map[event]bool{}
			)
			var refused atomic.Int64
			// ~1 KB events, so the backlog alone would exceed outageRSSLimit;
			// under -race, where RSS is not checked, small ones spare the
			// machine the other tests share.
			pad := strings.Repeat("x", 900)
			if raceBuilt() {
				pad = "x"
			}
			send := func(p *child, from, to int) {
				var wg sync.WaitGroup
				for c := range clients {
					wg.Go(func() {
						client := newClient(true)
						for n := from; n < to; n++ {
							rq := post{ds: fmt.Sprintf("outage_%d", n%2), token: clientToken}
							for i := range perRequest {
								rq.lines = append(rq.lines, fmt.Sprintf(`{"client":%d,"n":%d,"i":%d,"city":"Zürich","pad":"%s"}`, c, n, i, pad))
							}
							r, err := rq.send(client, p.base)
							mu.Lock()
							for _, l := range rq.lines {
								switch {
								case err == nil && r.status == http.StatusAccepted:
									acked = append(acked, event{rq.ds, l})
								case err != nil: // died mid-request: maybe stored
									maybe[event{rq.ds, l}] = true
								}
							}
							mu.Unlock()
							if err != nil {
								return
							}
							if r.status != http.StatusAccepted {
								refused.Add(1)
								t.Errorf("during the outage: got %d %s; want 202 while the spool has room", r.status, r.body)
								return
							}
						}
					})
				}
				wg.Wait()
			}
			checkHeld := func(p *child) {
				t.Helper()
				m, err := scrape(p)
				if err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				n := len(acked)
				mu.Unlock()
				if held := m["tbproxy_buffer_events"] + m["tbproxy_spool_backlog_events"]; held < float64(n)*0.99 {
					t.Errorf("buffer %v + backlog on disk %v events; want about the %d acknowledged", m["tbproxy_buffer_events"], m["tbproxy_spool_backlog_events"], n)
				}
				if m["tbproxy_spool_backlog_oldest_seconds"] <= 0 {
					t.Errorf("tbproxy_spool_backlog_oldest_seconds %v; want the backlog's age", m["tbproxy_spool_backlog_oldest_seconds"])
				}
				if code, body := getStatus(t, p.base+"/ready"); code != http.StatusOK {
					t.Errorf("/ready during the outage: %d %s; want 200: the spool is far from full", code, body)
				}
				rss := peakRSS(t, p.cmd.Process.Pid)
				t.Logf("peak RSS %.1f MiB with %d events acknowledged (%v in memory, %v on disk, %v bytes of segments)",
					float64(rss)/(1<<20), n, m["tbproxy_buffer_events"], m["tbproxy_spool_backlog_events"], m["tbproxy_spool_bytes"])
				if !raceBuilt() && rss > outageRSSLimit {
					t.Errorf("peak RSS %d MiB; want under %d MiB: memory must follow the buffer, not the backlog", rss>>20, outageRSSLimit>>20)
				}
			}

			p := startProxy(t, env())
			if kill {
				send(p, 0, requests/2)
				checkHeld(p)
				if err := p.cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				<-p.done
				p = startProxy(t, env()) // upstream still down
				send(p, requests/2, requests)
			} else {
				send(p, 0, requests)
			}
			checkHeld(p)
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n < clients*requests*perRequest*9/10 || refused.Load() > 0 {
				t.Fatalf("%d events acknowledged, %d requests refused; want all %d accepted", n, refused.Load(), clients*requests*perRequest)
			}

			if err := fb.Up(); err != nil {
				t.Fatal(err)
			}
			poll.Until(t, "every acknowledged event upstream", func() bool { return fb.RowCount() >= n })
			p.sigterm()
			if code := p.exitStatus(30 * time.Second); code != 0 {
				t.Fatalf("drain exited %d", code)
			}
			assertDelivered(t, fb.Rows(), acked, maybe, upstreamToken)
			t.Logf("%d events acknowledged during the outage, each delivered once (%d with an unknown outcome)", n, len(maybe))
		})
	}
}

// TestE2ESpoolFullRefuses: an outage longer than the disk allows ends in a
// clear refusal: 429 with a Retry-After and an error naming SPOOL_MAX_BYTES,
// and /ready turns 503 above the high-water mark, so a load balancer sends
// writes to a replica with room.
func TestE2ESpoolFullRefuses(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	fb.Down()
	p := startProxy(t, map[string]string{
		"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
		"SPOOL_DIR": t.TempDir(), "SPOOL_SEGMENT_BYTES": "64KiB", "SPOOL_MAX_BYTES": "256KiB", "BUFFER_SIZE": "100",
	})
	client := newClient(true)
	rq := post{ds: "full", token: clientToken}
	for i := range 20 {
		rq.lines = append(rq.lines, fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("x", 200)))
	}
	var r reply
	for n := 0; n < 100; n++ { // 256 KiB holds about 60 such requests
		var err error
		if r, err = rq.send(client, p.base); err != nil {
			t.Fatal(err)
		}
		if r.status != http.StatusAccepted {
			break
		}
	}
	if r.status != http.StatusTooManyRequests || !strings.Contains(string(r.body), "SPOOL_MAX_BYTES") {
		t.Fatalf("past SPOOL_MAX_BYTES: got %d %s; want 429 naming SPOOL_MAX_BYTES", r.status, r.body)
	}
	assertJSONError(t, r)
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After %q; want whole seconds in [1, 60]", r.header.Get("Retry-After"))
	}
	if code, body := getStatus(t, p.base+"/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "spool") {
		t.Errorf("/ready with the spool full: %d %s; want 503 naming the spool", code, body)
	}
}
