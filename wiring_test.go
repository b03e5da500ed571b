package main

// Tests of the wiring's own functions, in process. The tests that build and
// run the binary are in e2e/.

import (
	"testing"

	"github.com/tbproxy/tbproxy/config"
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
