package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
)

// TestE2ESpoolSurvivesKill9: with SPOOL_DIR, concurrent clients send while
// the proxy is killed with SIGKILL, again and again, each time restarted on
// the same directory; in the end every event any run acknowledged reaches
// upstream. Events sent while the process died may arrive twice (they were
// delivered but their delivery was not yet written down); that is reported.
func TestE2ESpoolSurvivesKill9(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	dir := t.TempDir()
	env := func() map[string]string {
		return map[string]string{
			"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "AUTHORIZATION_TOKEN": clientToken,
			"SPOOL_DIR": dir, "SPOOL_SEGMENT_BYTES": "64KiB", "FLUSH_INTERVAL": "300", "SHUTDOWN_TIMEOUT": "20s",
		}
	}
	var (
		mu    sync.Mutex
		acked []event
		maybe = map[event]bool{}
		sent  int
	)
	const rounds, clients = 4, 6
	for round := range rounds {
		p := startProxy(t, env())
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() {
				client := newClient(true)
				for n := 0; n < 10_000; n++ { // bounded; the kill ends it long before
					select {
					case <-stop:
						return
					default:
					}
					rq := post{ds: fmt.Sprintf("spool_%d", n%3), token: clientToken}
					for i := range 1 + n%8 {
						rq.lines = append(rq.lines, fmt.Sprintf(`{"round":%d,"client":%d,"n":%d,"i":%d,"s":"Zürich"}`, round, c, n, i))
					}
					r, err := rq.send(client, p.base)
					mu.Lock()
					sent += len(rq.lines)
					for _, l := range rq.lines {
						switch {
						case err == nil && r.status == 202:
							acked = append(acked, event{rq.ds, l})
						case err != nil: // died mid-request: maybe stored, maybe not
							maybe[event{rq.ds, l}] = true
						}
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			})
		}
		time.Sleep(700 * time.Millisecond) // load runs; then the process dies mid-load
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-p.done
		close(stop)
		wg.Wait()
		mu.Lock()
		t.Logf("round %d: killed with %d events acknowledged so far, %d upstream", round, len(acked), fb.RowCount())
		mu.Unlock()
	}

	// A last run replays what is left, then drains on SIGTERM.
	p := startProxy(t, env())
	p.sigterm()
	if code := p.exitStatus(30 * time.Second); code != 0 {
		t.Fatalf("final drain exited %d", code)
	}
	rows := fb.Rows()
	seen := map[event]int{}
	for _, r := range rows {
		seen[event{r.Datasource, string(r.Line)}]++
	}
	missing, dups := 0, 0
	for _, e := range acked {
		switch n := seen[e]; {
		case n == 0:
			missing++
		case n > 1:
			dups += n - 1
		}
	}
	t.Logf("SPOOL kill -9 x%d: sent=%d acked=%d upstream_rows=%d missing=%d duplicates=%d unknown_outcome=%d",
		rounds, sent, len(acked), len(rows), missing, dups, len(maybe))
	if missing > 0 {
		t.Errorf("%d acknowledged events never reached upstream", missing)
	}
	if len(acked) < rounds*100 {
		t.Errorf("only %d events acknowledged: the load did not run", len(acked))
	}
}

// TestE2ESpoolDirIsExclusive: a second process started on a SPOOL_DIR that
// a running proxy uses (a rolling update on a shared volume) refuses to
// start, naming the holder's pid; once the first exits, it starts.
func TestE2ESpoolDirIsExclusive(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	dir := t.TempDir()
	env := func() map[string]string {
		return map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken,
			"AUTHORIZATION_TOKEN": clientToken, "SPOOL_DIR": dir}
	}
	first := startProxy(t, env())
	env2 := env()
	env2["PORT"] = "0"
	second, stderr := command(t, env2)
	err := second.Run()
	if code := second.ProcessState.ExitCode(); err == nil || code != 1 {
		t.Fatalf("second process on the same SPOOL_DIR: exit %d (%v); want 1", code, err)
	}
	if want := fmt.Sprintf("in use by another process (pid %d)", first.cmd.Process.Pid); !strings.Contains(stderr.String(), want) {
		t.Errorf("second process said %q; want %q", stderr, want)
	}
	first.sigterm()
	if code := first.exitStatus(20 * time.Second); code != 0 {
		t.Fatalf("first exited %d", code)
	}
	again := startProxy(t, env())
	again.sigterm()
	if code := again.exitStatus(20 * time.Second); code != 0 {
		t.Fatalf("restart exited %d", code)
	}
}
