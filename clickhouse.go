package main

import (
	"log/slog"

	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/flusher"
)

// newClickHouse returns the upstream for a clickhouse:// TINYBIRD_BASE_URL:
// the same batching, retries and dead letters as Tinybird, with each batch
// inserted into <database>.<datasource>.
func newClickHouse(cfg config.Config, ch config.ClickHouse, log *slog.Logger) (flusher.Upstream, error) {
	up, err := flusher.NewClickHouse(flusher.ClickHouseOptions{
		Addr:             ch.Addr,
		TLS:              ch.TLS,
		User:             ch.User,
		Password:         ch.Password,
		Database:         ch.Database,
		AllowErrorsRatio: cfg.ClickHouseAllowErrorsRatio,
		Timeout:          cfg.UpstreamTimeout,
		MaxConns:         cfg.UpstreamConcurrency * 2,
		UserAgent:        "tbproxy",
		Log:              log,
	})
	if err != nil {
		return nil, err
	}
	return up, nil
}
