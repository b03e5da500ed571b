package main

import (
	"log/slog"

	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/upstream/clickhouse"
	"github.com/tbproxy/tbproxy/upstream/filesink"
	"github.com/tbproxy/tbproxy/upstream/tinybird"
)

// newUpstream returns the client of the upstream cfg.Upstream names: the
// file sink, a ClickHouse server (each batch inserted into
// <database>.<datasource>, with the same batching, retries and dead letters
// as Tinybird), or Tinybird's Events API.
func newUpstream(cfg config.Config, log *slog.Logger) (flusher.Sender, error) {
	switch up := cfg.Upstream(); up.Kind {
	case config.UpstreamFile:
		return filesink.New(up.Dir)
	case config.UpstreamClickHouse:
		ch, err := clickhouse.New(clickhouse.Options{
			Addr:             up.ClickHouse.Addr,
			TLS:              up.ClickHouse.TLS,
			User:             up.ClickHouse.User,
			Password:         up.ClickHouse.Password,
			Database:         up.ClickHouse.Database,
			AllowErrorsRatio: cfg.ClickHouseAllowErrorsRatio,
			Timeout:          cfg.UpstreamTimeout,
			MaxConns:         cfg.UpstreamConcurrency * 2,
			UserAgent:        "tbproxy",
			Log:              log,
		})
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return ch, nil
	default:
		return tinybird.New(tinybird.Options{
			BaseURL:   up.BaseURL,
			Token:     up.Token,
			Wait:      cfg.UpstreamWait,
			Zstd:      cfg.UpstreamEncoding == "zstd",
			Timeout:   cfg.UpstreamTimeout,
			MaxConns:  cfg.UpstreamConcurrency * 2,
			UserAgent: "tbproxy",
		})
	}
}

// warnUnauthenticated warns when ALLOW_UNAUTHENTICATED opens the upstream
// to anyone who can reach the proxy.
func warnUnauthenticated(cfg config.Config, log *slog.Logger) {
	if len(cfg.AuthorizationTokens) > 0 {
		return
	}
	if cfg.ProxyTokenMode() {
		log.Warn("ALLOW_UNAUTHENTICATED=true: anyone who can reach this proxy can write events and read the rest of the API with its TINYBIRD_TOKEN")
	}
	if cfg.Upstream().Kind == config.UpstreamClickHouse {
		log.Warn("ALLOW_UNAUTHENTICATED=true: anyone who can reach this proxy can write events into ClickHouse")
	}
}
