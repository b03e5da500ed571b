package e2e

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/clients"
	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/internal/natstest"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// TestE2EHealthcheck: the healthcheck subcommand, which container images use
// instead of curl, exits 0 while the server answers /health and 1 when it
// does not, finding it through PORT.
func TestE2EHealthcheck(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{})
	c := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL()})
	u, _ := url.Parse(c.base)
	run := func(port string) int {
		cmd, _ := command(t, map[string]string{"PORT": port})
		cmd.Args = []string{cmd.Path, "healthcheck"}
		_ = cmd.Run()
		return cmd.ProcessState.ExitCode()
	}
	if code := run(u.Port()); code != 0 {
		t.Errorf("healthcheck against a running proxy exited %d; want 0", code)
	}
	c.sigterm()
	if code := c.exitStatus(20e9); code != 0 {
		t.Fatalf("proxy exited %d", code)
	}
	if code := run(u.Port()); code != 1 {
		t.Errorf("healthcheck with nothing listening exited %d; want 1", code)
	}
}

// TestE2EMetricsMatchDocs: /metrics exposes every metric the table in
// docs/metrics.md lists, and the table lists every tbproxy_ metric /metrics
// exposes.
func TestE2EMetricsMatchDocs(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(doc), "## Metrics")
	end := strings.Index(string(doc)[start+1:], "\n## ")
	table := string(doc)[start : start+1+end]
	var documented []string
	for _, m := range regexp.MustCompile("`(tbproxy_[a-z_]+)").FindAllStringSubmatch(table, -1) {
		documented = append(documented, m[1])
	}
	slices.Sort(documented)
	documented = slices.Compact(documented)

	fb := fakebird.NewTB(t, fakebird.Options{})
	// One proxy with the spool on and one with the JetStream queue, so the
	// metrics of both are there; the union is what the table documents.
	spooled := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "SPOOL_DIR": t.TempDir()})
	queued := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(),
		"QUEUE_URL": natstest.Start(t).URL(), "QUEUE_MAX_BYTES": "64MiB"})
	// And one with a named client, accepted once and refused once, so the
	// per-client and limiter series exist.
	clientsFile := filepath.Join(t.TempDir(), "clients.json")
	if err := os.WriteFile(clientsFile, []byte(`{"clients":[{"name":"docs","token_sha256":"`+clients.HashToken([]byte(clientToken))+
		`","datasources":["metrics_docs"],"events_per_minute":100}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	named := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "CLIENTS_FILE": clientsFile})
	post{ds: "metrics_docs", token: clientToken, lines: []string{`{"a":1}`}}.mustAccept(t, newClient(false), named.base)
	if r, err := (post{ds: "elsewhere", token: clientToken, lines: []string{`{"a":1}`}}).send(newClient(false), named.base); err != nil || r.status != http.StatusForbidden {
		t.Fatalf("a datasource outside the allow-list: got %v %d; want 403", err, r.status)
	}
	// One event delivered makes the per-datasource series exist.
	post{ds: "metrics_docs", token: clientToken, lines: []string{`{"a":1}`}}.mustAccept(t, newClient(false), spooled.base)
	poll.Until(t, "the events delivered", func() bool { return fb.RowCount() == 2 })
	var exposed []string
	for _, c := range []*child{spooled, queued, named} {
		_, body := getStatus(t, c.base+"/metrics")
		for _, m := range regexp.MustCompile(`(?m)^# TYPE (tbproxy_[a-z_]+) `).FindAllStringSubmatch(body, -1) {
			exposed = append(exposed, m[1])
		}
	}
	slices.Sort(exposed)
	exposed = slices.Compact(exposed)
	for _, m := range documented {
		if _, found := slices.BinarySearch(exposed, m); !found {
			t.Errorf("docs/metrics.md lists %s; /metrics does not expose it", m)
		}
	}
	for _, m := range exposed {
		if _, found := slices.BinarySearch(documented, m); !found {
			t.Errorf("/metrics exposes %s; the table in docs/metrics.md does not list it", m)
		}
	}
	if len(exposed) < 20 {
		t.Errorf("only %d tbproxy_ metrics exposed: %v", len(exposed), exposed)
	}
}

// TestE2EShutdownDelay: after SIGTERM /ready answers 503 at once, while
// writes are still accepted for SHUTDOWN_DELAY, so a load balancer can take
// the instance out of rotation before it stops taking writes.
func TestE2EShutdownDelay(t *testing.T) {
	t.Parallel()
	fb := fakebird.NewTB(t, fakebird.Options{})
	c := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "SHUTDOWN_DELAY": "3s", "FLUSH_INTERVAL": "50"})
	c.sigterm()
	client := &http.Client{}
	var readyStatus int
	for range 100 { // the signal is handled asynchronously; /ready turns within moments
		resp, err := client.Get(c.base + "/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if readyStatus = resp.StatusCode; readyStatus == 503 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if readyStatus != 503 {
		t.Fatalf("/ready after SIGTERM: got %d; want 503", readyStatus)
	}
	resp, err := client.Post(c.base+"/v0/events?name=late&token=t", "application/json", strings.NewReader(`{"during":"delay"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Errorf("write during SHUTDOWN_DELAY: got %d; want 202", resp.StatusCode)
	}
	if code := c.exitStatus(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if fb.RowCountFor("late") != 1 {
		t.Errorf("the write accepted during the delay was not delivered")
	}
}
