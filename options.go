package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/clients"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/tbproxy/tbproxy/limits"
	"github.com/tbproxy/tbproxy/proxy"
)

// bufferOptions are the buffer's options from cfg.
func bufferOptions(cfg config.Config) buffer.Options {
	share := cfg.BufferStreamShare
	if share >= 1 {
		share = 0 // off
	}
	return buffer.Options{MaxEvents: cfg.BufferSize, MaxBytes: int(cfg.BufferMaxBytes),
		MaxDatasources: cfg.MaxDatasources, MaxUnverifiedTokens: cfg.MaxUnverifiedTokens, StreamShare: share}
}

// flusherOptions are the flusher's options from cfg, without dead letters:
// run gives the flusher the writer it shares with the queue, and replay
// none.
func flusherOptions(cfg config.Config, up flusher.Sender) flusher.Options {
	_, queue := cfg.QueueURLs()
	return flusher.Options{
		Upstream:      up,
		BatchRows:     cfg.BatchSize,
		BatchBytes:    int(cfg.BatchMaxBytes),
		FlushInterval: time.Duration(cfg.FlushInterval),
		Concurrency:   cfg.UpstreamConcurrency,
		MinBackoff:    cfg.RetryMinBackoff,
		MaxBackoff:    cfg.RetryMaxBackoff,
		DrainTimeout:  cfg.ShutdownTimeout,
		TokenDenyTTL:  cfg.TokenDenyTTL,
		// The spool keeps what a shutdown could not deliver, for the next
		// start, and the queue for another replica; dead-lettering it too
		// would deliver it twice. QUEUE_URL="," names no server: no queue.
		RetainOnShutdown: cfg.SpoolDir != "" || queue,
		MaxStreams:       cfg.MaxDatasources,
	}
}

// proxyOptions are the server's options from cfg: readiness may ask the
// flusher whether upstream is healthy, the store takes accepted requests,
// and reg is served on /metrics.
func proxyOptions(cfg config.Config, fl *flusher.Flusher, st *store, reg *prometheus.Registry) proxy.Options {
	var pass proxy.PassthroughOptions
	// Only Tinybird has an API to pass through: ClickHouse writes with its
	// own user, and no client tokens go upstream.
	if up := cfg.Upstream(); cfg.Passthrough && up.Kind == config.UpstreamTinybird {
		pass = proxy.PassthroughOptions{BaseURL: up.BaseURL, Token: up.Token, Timeout: cfg.UpstreamTimeout,
			// An open proxy must not let anyone truncate datasources with TINYBIRD_TOKEN.
			ReadOnly: cfg.ProxyTokenMode() && len(cfg.AuthorizationTokens) == 0 && cfg.ClientsFile == ""}
	}
	var upstreamHealthy func() bool
	if cfg.ReadyRequiresUpstream {
		upstreamHealthy = fl.Healthy
	}
	o := proxy.Options{
		MaxBodyBytes:       int(cfg.MaxBodyBytes),
		RequestMemoryBytes: int(cfg.RequestMemoryBytes),
		PassThrough:        cfg.ClientTokensUpstream(),
		Tokens:             cfg.AuthorizationTokens,
		HighWatermark:      cfg.BufferHighWatermark,
		WaitTimeout:        cfg.WaitTimeout,
		Passthrough:        pass,
		CORSOrigins:        cfg.CORSAllowedOrigins,
		MaxDatasources:     cfg.MaxDatasources,
		MaxConnections:     cfg.MaxConnections,
		MaxHeaderBytes:     int(cfg.MaxHeaderBytes),
		MaxTokenBytes:      int(cfg.MaxTokenBytes),
		UpstreamHealthy:    upstreamHealthy,
		ReadTimeout:        cfg.ReadTimeout,
		WriteTimeout:       cfg.WriteTimeout,
		IdleTimeout:        cfg.IdleTimeout,
		Gatherer:           reg,
	}
	st.serveInto(&o)
	return o
}

// admitInto gives the server what decides admission beyond the token: the
// named clients (nil: no CLIENTS_FILE), the limiter (nil: no limits) and
// the Idempotency-Key store (nil: IDEMPOTENCY_WINDOW=0).
func admitInto(o *proxy.Options, cfg config.Config, set *clients.Set, lim *limits.Limiter, idem *idempotencyStore) {
	o.Clients = set
	if lim != nil {
		o.Limiter = lim
		if cfg.ClientTokensUpstream() {
			o.TokenLimit = limits.Limit{PerMinute: cfg.RateLimitEventsPerMinute, PerDay: cfg.RateLimitEventsPerDay}
		}
	}
	if idem != nil {
		o.Idempotency = idem.Store
	}
}
