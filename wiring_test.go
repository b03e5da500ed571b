package main

// Tests of the wiring's own functions, in process. The tests that build and
// run the binary are in e2e/.

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/proxy"
)

// TestRetainOnShutdownNeedsAStore: rows left at the shutdown timeout are
// kept for later only when a spool or a queue will deliver them; otherwise
// they are dead-lettered and counted. QUEUE_URL="," names no server and
// opens no queue, so it retains nothing.
func TestRetainOnShutdownNeedsAStore(t *testing.T) {
	for _, tt := range []struct {
		cfg  config.Config
		want bool
	}{
		{config.Config{}, false},
		{config.Config{QueueURL: ","}, false},
		{config.Config{QueueURL: "nats://127.0.0.1:4222"}, true},
		{config.Config{SpoolDir: "/var/lib/tbproxy"}, true},
	} {
		if got := flusherOptions(tt.cfg, nil).RetainOnShutdown; got != tt.want {
			t.Errorf("QUEUE_URL=%q SPOOL_DIR=%q: RetainOnShutdown %v; want %v", tt.cfg.QueueURL, tt.cfg.SpoolDir, got, tt.want)
		}
	}
}

// TestPassthroughOnlyToTinybird: the rest of the API is passed through to
// Tinybird only, read-only when the proxy is open; the file sink and
// ClickHouse have no API to pass through. The store given decides where
// requests are written, and an empty one leaves them to the buffer.
func TestPassthroughOnlyToTinybird(t *testing.T) {
	for _, tt := range []struct {
		environ map[string]string
		want    proxy.PassthroughOptions
	}{
		{map[string]string{"TINYBIRD_TOKEN": "p.up", "AUTHORIZATION_TOKEN": "c"},
			proxy.PassthroughOptions{BaseURL: "https://api.tinybird.co", Token: "p.up", Timeout: 30 * time.Second}},
		{map[string]string{"TINYBIRD_TOKEN": "p.up", "ALLOW_UNAUTHENTICATED": "true"},
			proxy.PassthroughOptions{BaseURL: "https://api.tinybird.co", Token: "p.up", Timeout: 30 * time.Second, ReadOnly: true}},
		{map[string]string{"TINYBIRD_TOKEN": "p.up", "AUTHORIZATION_TOKEN": "c", "PASSTHROUGH": "false"}, proxy.PassthroughOptions{}},
		{map[string]string{"TINYBIRD_BASE_URL": "file://./events"}, proxy.PassthroughOptions{}},
		{map[string]string{"TINYBIRD_BASE_URL": "clickhouse://db/analytics", "AUTHORIZATION_TOKEN": "c"}, proxy.PassthroughOptions{}},
	} {
		cfg, err := config.Load(tt.environ)
		if err != nil {
			t.Fatal(err)
		}
		o := proxyOptions(cfg, nil, new(store), prometheus.NewRegistry())
		if o.Passthrough != tt.want {
			t.Errorf("%v: got %+v; want %+v", tt.environ, o.Passthrough, tt.want)
		}
		if o.Store != nil || o.IgnoreBufferFill || len(o.Ready) != 0 {
			t.Errorf("%v: with no spool or queue, got Store %v, IgnoreBufferFill %v, %d Ready checks; want none",
				tt.environ, o.Store, o.IgnoreBufferFill, len(o.Ready))
		}
	}
}
