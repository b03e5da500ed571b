package config

import (
	"fmt"
	"net"
	"strconv"
	"time"
)

// validate checks value ranges and the rules that join two variables. It
// skips variables in failed, which already have a parse error, so each
// mistake is reported once.
func (c Config) validate(failed map[string]bool) []error {
	v := validator{failed: failed}

	v.check(c.Port >= 0 && c.Port <= 65535, "PORT", "must be between 0 and 65535, got %d", c.Port)
	up := c.Upstream()
	c.validateClickHouse(&v, up) // ClickHouse's own rules
	if up.Kind != UpstreamClickHouse && c.ProxyTokenMode() && len(c.AuthorizationTokens) == 0 && c.ClientsFile == "" && !c.AllowUnauthenticated && v.ok("AUTHORIZATION_TOKEN", "ALLOW_UNAUTHENTICATED") {
		v.check(false, "AUTHORIZATION_TOKEN", "required when TINYBIRD_TOKEN is set: "+
			"set AUTHORIZATION_TOKEN to the comma-separated tokens your clients will send (or name them in CLIENTS_FILE), "+
			"or set ALLOW_UNAUTHENTICATED=true to run an open proxy that spends your TINYBIRD_TOKEN for anyone who can reach it")
	}
	if up.Kind == UpstreamTinybird && !c.ProxyTokenMode() && len(c.AuthorizationTokens) > 0 && v.ok("TINYBIRD_BASE_URL") {
		v.check(false, "AUTHORIZATION_TOKEN", "is set but TINYBIRD_TOKEN is not: "+
			"without TINYBIRD_TOKEN the proxy forwards each client's own Tinybird token (pass-through mode), "+
			"so the proxy would have no token to send upstream; set TINYBIRD_TOKEN too, or unset AUTHORIZATION_TOKEN")
	}
	v.check(c.BatchSize >= 1, "BATCH_SIZE", "must be at least 1, got %d", c.BatchSize)
	v.check(c.BatchMaxBytes >= 1<<10, "BATCH_MAX_BYTES", "must be at least 1KiB, got %s", c.BatchMaxBytes)
	v.check(c.BufferSize >= 1, "BUFFER_SIZE", "must be at least 1, got %d", c.BufferSize)
	v.check(c.BufferMaxBytes > 0, "BUFFER_MAX_BYTES", "must be greater than 0, got %s", c.BufferMaxBytes)
	v.check(c.BufferHighWatermark > 0 && c.BufferHighWatermark <= 1, "BUFFER_HIGH_WATERMARK",
		"must be greater than 0 and at most 1, got %g", c.BufferHighWatermark)
	v.positive("FLUSH_INTERVAL", time.Duration(c.FlushInterval))
	v.check(c.MaxBodyBytes > 0, "MAX_BODY_BYTES", "must be greater than 0, got %s", c.MaxBodyBytes)
	if c.MaxBodyBytes > 0 && c.BufferMaxBytes > 0 && v.ok("BUFFER_MAX_BYTES") {
		v.check(c.MaxBodyBytes <= c.BufferMaxBytes, "MAX_BODY_BYTES",
			"%s must not exceed BUFFER_MAX_BYTES (%s), or a full request could never fit in the buffer", c.MaxBodyBytes, c.BufferMaxBytes)
	}
	if c.MaxBodyBytes > 0 && c.BufferSize >= 1 && v.ok("MAX_BODY_BYTES", "BUFFER_SIZE") {
		need := requestMemoryNeed(int64(c.MaxBodyBytes), int64(c.BufferSize))
		v.check(int64(c.RequestMemoryBytes) >= need, "REQUEST_MEMORY_BYTES",
			"%s is less than one request of MAX_BODY_BYTES (%s) can hold while it is read and decoded (%s): such a request would always be refused",
			c.RequestMemoryBytes, c.MaxBodyBytes, ByteSize(need))
	}
	v.check(c.UpstreamEncoding == "gzip" || c.UpstreamEncoding == "zstd", "UPSTREAM_ENCODING", "must be gzip or zstd, got %q", c.UpstreamEncoding)
	if c.UpstreamEncoding == "zstd" {
		v.check(up.Kind == UpstreamTinybird, "UPSTREAM_ENCODING", "zstd is for a Tinybird upstream (TINYBIRD_BASE_URL http:// or https://); ClickHouse and the file sink take gzip or files")
	}
	v.check(c.UpstreamConcurrency >= 1 && c.UpstreamConcurrency <= 1024, "UPSTREAM_CONCURRENCY",
		"must be between 1 and 1024, got %d", c.UpstreamConcurrency)
	v.positive("UPSTREAM_TIMEOUT", c.UpstreamTimeout)
	v.positive("RETRY_MIN_BACKOFF", c.RetryMinBackoff)
	v.positive("RETRY_MAX_BACKOFF", c.RetryMaxBackoff)
	if c.RetryMinBackoff > 0 && v.ok("RETRY_MIN_BACKOFF") {
		v.check(c.RetryMaxBackoff >= c.RetryMinBackoff, "RETRY_MAX_BACKOFF",
			"%s must not be less than RETRY_MIN_BACKOFF (%s)", c.RetryMaxBackoff, c.RetryMinBackoff)
	}
	v.positive("SHUTDOWN_TIMEOUT", c.ShutdownTimeout)
	v.check(c.ShutdownDelay >= 0, "SHUTDOWN_DELAY", "must not be negative, got %s", c.ShutdownDelay)
	v.positive("WAIT_TIMEOUT", c.WaitTimeout)
	v.check(c.SpoolFsync == "always" || c.SpoolFsync == "interval" || c.SpoolFsync == "never", "SPOOL_FSYNC",
		"must be always, interval or never, got %q", c.SpoolFsync)
	v.positive("SPOOL_FSYNC_INTERVAL", c.SpoolFsyncInterval)
	v.check(c.SpoolSegmentBytes >= 64<<10, "SPOOL_SEGMENT_BYTES", "must be at least 64KiB, got %s", c.SpoolSegmentBytes)
	if c.SpoolSegmentBytes > 0 && v.ok("SPOOL_MAX_BYTES", "SPOOL_SEGMENT_BYTES") {
		v.check(c.SpoolMaxBytes >= c.SpoolSegmentBytes, "SPOOL_MAX_BYTES", "%s must be at least SPOOL_SEGMENT_BYTES (%s)", c.SpoolMaxBytes, c.SpoolSegmentBytes)
	}
	c.validateQueue(&v)
	v.check(c.MaxDatasources >= 1, "MAX_DATASOURCES", "must be at least 1, got %d", c.MaxDatasources)
	v.check(c.MaxUnverifiedTokens >= 1, "MAX_UNVERIFIED_TOKENS", "must be at least 1, got %d", c.MaxUnverifiedTokens)
	v.check(c.MaxConnections >= 1, "MAX_CONNECTIONS", "must be at least 1, got %d", c.MaxConnections)
	v.check(c.MaxHeaderBytes >= 1<<10 && c.MaxHeaderBytes <= 1<<20, "MAX_HEADER_BYTES", "must be between 1KiB and 1MiB, got %s", c.MaxHeaderBytes)
	v.check(c.MaxTokenBytes >= 16 && c.MaxTokenBytes <= 64<<10 /* buffer.MaxTokenLen */, "MAX_TOKEN_BYTES", "must be between 16B and 64KiB, got %s", c.MaxTokenBytes)
	for i, t := range c.AuthorizationTokens {
		// A client could never send such a token: the proxy refuses it at the door.
		v.check(tokenShape(t, int(c.MaxTokenBytes)), "AUTHORIZATION_TOKEN",
			"token %d of %d is not 1 to MAX_TOKEN_BYTES (%s) printable ASCII characters without spaces", i+1, len(c.AuthorizationTokens), c.MaxTokenBytes)
	}
	if c.AdminToken != "" {
		// It guards pause and flush: a guessable one is a way in.
		v.check(len(c.AdminToken) >= 16 && tokenShape(c.AdminToken, 4096), "ADMIN_TOKEN",
			"must be 16 to 4096 printable ASCII characters without spaces (e.g. openssl rand -hex 24)")
		for _, t := range c.AuthorizationTokens {
			v.check(t != c.AdminToken, "ADMIN_TOKEN", "must differ from every AUTHORIZATION_TOKEN: clients must not hold the console's key")
		}
		v.check(c.AdminToken != c.TinybirdToken, "ADMIN_TOKEN", "must differ from TINYBIRD_TOKEN")
	}
	if c.AdminAddr != "" {
		_, port, err := net.SplitHostPort(c.AdminAddr)
		p, perr := strconv.Atoi(port)
		valid := err == nil && perr == nil && p >= 0 && p <= 65535
		v.check(valid, "ADMIN_ADDR", "must be host:port or :port, got %q", c.AdminAddr)
		if valid {
			v.check(p == 0 || p != c.Port, "ADMIN_ADDR", "must not be the public PORT (%d): the point is to keep /metrics and /-/ off it", c.Port)
		}
	}
	c.validateClients(&v)
	v.check(len(c.CORSAllowedOrigins) > 0, "CORS_ALLOWED_ORIGINS", "must list at least one origin, or *")
	v.check(c.TokenDenyTTL >= 0, "TOKEN_DENY_TTL", "must not be negative, got %s", c.TokenDenyTTL)
	// A zero ReadTimeout or IdleTimeout lets idle keep-alive connections pin
	// shutdown open (house style §4).
	v.positive("READ_TIMEOUT", c.ReadTimeout)
	v.positive("WRITE_TIMEOUT", c.WriteTimeout)
	v.positive("IDLE_TIMEOUT", c.IdleTimeout)
	v.check(c.LogFormat == "json" || c.LogFormat == "text", "LOG_FORMAT", "must be json or text, got %q", c.LogFormat)
	return v.errs
}

// requestMemoryNeed is the most memory one request can hold while it is read
// and decoded, as the proxy counts it: the body as received and decoded
// (each one byte over maxBody, to see that it is too large), and an index
// of 24 bytes per line, for at most one line per byte and maxEvents+1 lines;
// rounded up to a MiB.
func requestMemoryNeed(maxBody, maxEvents int64) int64 {
	n := 2*(maxBody+1) + 24*min(maxBody+1, maxEvents+1)
	return (n + 1<<20 - 1) &^ (1<<20 - 1)
}

// tokenShape reports whether t looks like a token the proxy accepts from a
// client: 1 to max bytes of printable ASCII, no spaces. It is the rule of
// buffer.ValidToken, restated: config stays a leaf package (house style §1).
// config_test checks it (spaces, length) as proxy's security tests check
// the buffer's.
func tokenShape(t string, max int) bool {
	if len(t) == 0 || len(t) > max {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] < 0x21 || t[i] > 0x7e {
			return false
		}
	}
	return true
}

// validator collects one error per failed check.
type validator struct {
	failed map[string]bool // variables that did not parse; their checks are skipped
	errs   []error
}

// ok reports whether none of keys failed to parse.
func (v *validator) ok(keys ...string) bool {
	for _, k := range keys {
		if v.failed[k] {
			return false
		}
	}
	return true
}

// check records "KEY: message" unless cond holds or key failed to parse.
func (v *validator) check(cond bool, key, format string, args ...any) {
	if cond || v.failed[key] {
		return
	}
	v.errs = append(v.errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

// positive checks that the duration in key is greater than zero.
func (v *validator) positive(key string, d time.Duration) {
	v.check(d > 0, key, "must be greater than 0, got %s", d)
}

// validateClients checks the variables of named clients, limits, fair
// share and idempotency. The clients file itself is read and checked at
// start-up by the clients package, which names the file, client and field.
func (c Config) validateClients(v *validator) {
	if c.ClientsFile != "" {
		v.check(!c.ClientTokensUpstream(), "CLIENTS_FILE",
			"names clients by the tokens they send to the proxy, but without TINYBIRD_TOKEN each client's token goes to Tinybird (pass-through mode); "+
				"set TINYBIRD_TOKEN, or use RATE_LIMIT_EVENTS_PER_MINUTE and RATE_LIMIT_EVENTS_PER_DAY to limit each token")
	}
	if c.ClientsFile != "" {
		v.check(!c.AllowUnauthenticated, "CLIENTS_FILE", "is set with ALLOW_UNAUTHENTICATED=true: a client could dodge its limits and allow-list by sending no token; unset one of them")
	}
	v.check(c.ClientsWatchInterval >= 0, "CLIENTS_WATCH_INTERVAL", "must not be negative, got %s", c.ClientsWatchInterval)
	v.check(c.RateLimitEventsPerMinute >= 0, "RATE_LIMIT_EVENTS_PER_MINUTE", "must not be negative, got %d", c.RateLimitEventsPerMinute)
	v.check(c.RateLimitEventsPerDay >= 0, "RATE_LIMIT_EVENTS_PER_DAY", "must not be negative, got %d", c.RateLimitEventsPerDay)
	for _, k := range []struct {
		name string
		n    int64
	}{{"RATE_LIMIT_EVENTS_PER_MINUTE", c.RateLimitEventsPerMinute}, {"RATE_LIMIT_EVENTS_PER_DAY", c.RateLimitEventsPerDay}} {
		if k.n > 0 {
			v.check(c.ClientTokensUpstream(), k.name, "limits each client's Tinybird token in pass-through mode (TINYBIRD_TOKEN unset); "+
				"with TINYBIRD_TOKEN set, give named clients events_per_minute and events_per_day in CLIENTS_FILE")
		}
	}
	v.check(c.RateLimitMaxKeys >= 1, "RATE_LIMIT_MAX_KEYS", "must be at least 1, got %d", c.RateLimitMaxKeys)
	v.check(c.BufferStreamShare > 0 && c.BufferStreamShare <= 1, "BUFFER_STREAM_SHARE",
		"must be greater than 0 and at most 1 (1 turns it off), got %g", c.BufferStreamShare)
	v.check(c.IdempotencyWindow >= 0, "IDEMPOTENCY_WINDOW", "must not be negative (0 turns Idempotency-Key off), got %s", c.IdempotencyWindow)
	v.check(c.IdempotencyMaxKeys >= 1, "IDEMPOTENCY_MAX_KEYS", "must be at least 1, got %d", c.IdempotencyMaxKeys)
}
