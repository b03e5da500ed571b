package main

import (
	"log/slog"
	"os"
	"time"

	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/internal/logthrottle"
)

// newLogger logs to stderr; a warning repeated more than 5 times in 10s is
// held back and counted, so an outage never becomes a log storm.
func newLogger(cfg config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, opts)
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	return slog.New(logthrottle.New(h, 10*time.Second, 5))
}
