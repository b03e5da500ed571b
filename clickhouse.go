package main

import (
	"log/slog"

	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/upstream/clickhouse"
)

// newClickHouse returns the upstream for a clickhouse:// TINYBIRD_BASE_URL:
// the same batching, retries and dead letters as Tinybird, with each batch
// inserted into <database>.<datasource>.
func newClickHouse(cfg config.Config, ch config.ClickHouse, log *slog.Logger) (flusher.Sender, error) {
	up, err := clickhouse.New(clickhouse.Options{
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
