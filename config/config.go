package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/tbproxy/tbproxy/internal/redact"
)

// Config is the proxy's validated configuration. Each field names the
// environment variable it comes from and that variable's default.
//
// The zero value is not a valid configuration; use [Load]. A Config is a plain
// value that is safe to read from many goroutines; copies share
// AuthorizationTokens, which callers must not modify.
type Config struct {
	// Port is the TCP port to listen on (PORT, 8080); 0 picks a free port.
	Port int `env:"PORT" envDefault:"8080"`

	// TinybirdToken is the token sent upstream in proxy-token mode
	// (TINYBIRD_TOKEN, unset). Empty means pass-through mode. It is secret.
	TinybirdToken string `env:"TINYBIRD_TOKEN"`

	// TinybirdBaseURL is the upstream API (TINYBIRD_BASE_URL,
	// https://api.tinybird.co) without a trailing slash, or file://<dir> for
	// the file sink; see [Config.FileSinkDir].
	TinybirdBaseURL string `env:"TINYBIRD_BASE_URL" envDefault:"https://api.tinybird.co"`

	// AuthorizationTokens are the tokens clients may send in proxy-token mode
	// (AUTHORIZATION_TOKEN, comma-separated, unset), trimmed, with empty items
	// dropped. They are secret.
	AuthorizationTokens []string `env:"AUTHORIZATION_TOKEN"`

	// AllowUnauthenticated lets anyone use TinybirdToken when
	// AuthorizationTokens is empty (ALLOW_UNAUTHENTICATED, false).
	AllowUnauthenticated bool `env:"ALLOW_UNAUTHENTICATED" envDefault:"false"`

	// BatchSize is the most events sent in one upstream request (BATCH_SIZE, 100000).
	BatchSize int `env:"BATCH_SIZE" envDefault:"100000"`

	// BatchMaxBytes is the most uncompressed NDJSON bytes in one upstream
	// request (BATCH_MAX_BYTES, 10MiB).
	BatchMaxBytes ByteSize `env:"BATCH_MAX_BYTES" envDefault:"10MiB"`

	// BufferSize is the most events held in memory (BUFFER_SIZE, 1000000).
	BufferSize int `env:"BUFFER_SIZE" envDefault:"1000000"`

	// BufferMaxBytes is the most event bytes held in memory (BUFFER_MAX_BYTES, 512MiB).
	BufferMaxBytes ByteSize `env:"BUFFER_MAX_BYTES" envDefault:"512MiB"`

	// BufferHighWatermark is the fraction of BufferSize or BufferMaxBytes above
	// which readiness fails (BUFFER_HIGH_WATERMARK, 0.9), in (0, 1].
	BufferHighWatermark float64 `env:"BUFFER_HIGH_WATERMARK" envDefault:"0.9"`

	// FlushInterval is the longest an event waits before its batch is sent
	// (FLUSH_INTERVAL, 1000 milliseconds).
	FlushInterval Millis `env:"FLUSH_INTERVAL" envDefault:"1000"`

	// MaxBodyBytes is the largest request body accepted, measured after
	// decompression (MAX_BODY_BYTES, 10MiB).
	MaxBodyBytes ByteSize `env:"MAX_BODY_BYTES" envDefault:"10MiB"`

	// RequestMemoryBytes bounds the memory all requests hold at once for
	// bodies being read, decoded and split into lines (REQUEST_MEMORY_BYTES,
	// 128MiB); beyond it a request gets 503 with Retry-After.
	RequestMemoryBytes ByteSize `env:"REQUEST_MEMORY_BYTES" envDefault:"128MiB"`

	// UpstreamWait sends wait=true upstream, so Tinybird answers only once the
	// rows are written (UPSTREAM_WAIT, true).
	UpstreamWait bool `env:"UPSTREAM_WAIT" envDefault:"true"`

	// UpstreamEncoding is how batches are compressed for a Tinybird
	// upstream: gzip or zstd (UPSTREAM_ENCODING, gzip).
	UpstreamEncoding string `env:"UPSTREAM_ENCODING" envDefault:"gzip"`

	// UpstreamConcurrency is the most upstream requests in flight
	// (UPSTREAM_CONCURRENCY, 4).
	UpstreamConcurrency int `env:"UPSTREAM_CONCURRENCY" envDefault:"4"`

	// UpstreamTimeout bounds one upstream request (UPSTREAM_TIMEOUT, 30s).
	UpstreamTimeout time.Duration `env:"UPSTREAM_TIMEOUT" envDefault:"30s"`

	// RetryMinBackoff is the first retry delay (RETRY_MIN_BACKOFF, 100ms).
	RetryMinBackoff time.Duration `env:"RETRY_MIN_BACKOFF" envDefault:"100ms"`

	// RetryMaxBackoff caps the exponential retry delay (RETRY_MAX_BACKOFF, 10s).
	RetryMaxBackoff time.Duration `env:"RETRY_MAX_BACKOFF" envDefault:"10s"`

	// ShutdownTimeout bounds the graceful shutdown after SIGINT or SIGTERM,
	// including sending buffered events (SHUTDOWN_TIMEOUT, 30s).
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s"`

	// ShutdownDelay is how long the proxy reports not ready before it stops
	// accepting connections (SHUTDOWN_DELAY, 0).
	ShutdownDelay time.Duration `env:"SHUTDOWN_DELAY" envDefault:"0s"`

	// WaitTimeout bounds how long a wait=true request is held for its rows
	// to be acknowledged upstream before it gets 503 (WAIT_TIMEOUT, 10s).
	WaitTimeout time.Duration `env:"WAIT_TIMEOUT" envDefault:"10s"`

	// TokenDenyTTL is how long, in pass-through mode, a token upstream
	// answered 403 is refused at once (TOKEN_DENY_TTL, 60s; 0 turns it off).
	TokenDenyTTL time.Duration `env:"TOKEN_DENY_TTL" envDefault:"60s"`

	// DeadLetterDir receives every dropped batch (DEAD_LETTER_DIR, unset:
	// off).
	DeadLetterDir string `env:"DEAD_LETTER_DIR"`

	// SpoolDir turns on the write-ahead spool (SPOOL_DIR, unset: memory
	// only).
	SpoolDir string `env:"SPOOL_DIR"`

	// SpoolSegmentBytes rolls spool segments at this size
	// (SPOOL_SEGMENT_BYTES, 64MiB).
	SpoolSegmentBytes ByteSize `env:"SPOOL_SEGMENT_BYTES" envDefault:"64MiB"`

	// SpoolMaxBytes bounds the spool on disk (SPOOL_MAX_BYTES, 4GiB).
	SpoolMaxBytes ByteSize `env:"SPOOL_MAX_BYTES" envDefault:"4GiB"`

	// SpoolFsync is always, interval or never (SPOOL_FSYNC, interval).
	SpoolFsync string `env:"SPOOL_FSYNC" envDefault:"interval"`

	// SpoolFsyncInterval is the fsync period in interval mode
	// (SPOOL_FSYNC_INTERVAL, 100ms).
	SpoolFsyncInterval time.Duration `env:"SPOOL_FSYNC_INTERVAL" envDefault:"100ms"`

	// QueueURL selects the shared JetStream queue (QUEUE_URL, unset): NATS
	// server URLs, comma-separated. It may hold a password; it is logged
	// redacted. It cannot be combined with SPOOL_DIR.
	QueueURL string `env:"QUEUE_URL"`

	// QueueStream is the JetStream stream's name (QUEUE_STREAM, TBPROXY).
	QueueStream string `env:"QUEUE_STREAM" envDefault:"TBPROXY"`

	// QueueSubject prefixes the queue's subjects (QUEUE_SUBJECT,
	// tbproxy.events): requests go to <prefix>.<datasource>.
	QueueSubject string `env:"QUEUE_SUBJECT" envDefault:"tbproxy.events"`

	// QueueReplicas is the stream's replication factor (QUEUE_REPLICAS, 1).
	QueueReplicas int `env:"QUEUE_REPLICAS" envDefault:"1"`

	// QueueMaxBytes bounds the stream; beyond it writes get 429
	// (QUEUE_MAX_BYTES, 4GiB).
	QueueMaxBytes ByteSize `env:"QUEUE_MAX_BYTES" envDefault:"4GiB"`

	// QueueMaxAge is the longest a message stays in the stream
	// (QUEUE_MAX_AGE, 168h).
	QueueMaxAge time.Duration `env:"QUEUE_MAX_AGE" envDefault:"168h"`

	// QueueAckWait is how long a fetched message may go unacknowledged before
	// JetStream redelivers it (QUEUE_ACK_WAIT, 30s).
	QueueAckWait time.Duration `env:"QUEUE_ACK_WAIT" envDefault:"30s"`

	// QueueMaxDeliver is how many deliveries a message gets before it is
	// dead-lettered (QUEUE_MAX_DELIVER, 10).
	QueueMaxDeliver int `env:"QUEUE_MAX_DELIVER" envDefault:"10"`

	// QueueCreds is a NATS .creds file (QUEUE_CREDS, unset).
	QueueCreds string `env:"QUEUE_CREDS"`

	// QueueTLSCA is a PEM file of CAs to trust for NATS TLS (QUEUE_TLS_CA, unset).
	QueueTLSCA string `env:"QUEUE_TLS_CA"`

	// Passthrough forwards every path other than the proxy's own to
	// TINYBIRD_BASE_URL (PASSTHROUGH, true).
	Passthrough bool `env:"PASSTHROUGH" envDefault:"true"`

	// CORSAllowedOrigins are the origins browsers may call the proxy from
	// (CORS_ALLOWED_ORIGINS, comma-separated, "*").
	CORSAllowedOrigins []string `env:"CORS_ALLOWED_ORIGINS" envDefault:"*"`

	// ReadyRequiresUpstream makes /ready answer 503 while upstream attempts
	// are failing (READY_REQUIRES_UPSTREAM, false).
	ReadyRequiresUpstream bool `env:"READY_REQUIRES_UPSTREAM" envDefault:"false"`

	// MaxDatasources caps the distinct datasource names held in the buffer
	// at once (MAX_DATASOURCES, 1000); a name is forgotten when its last
	// event is delivered or dropped.
	MaxDatasources int `env:"MAX_DATASOURCES" envDefault:"1000"`

	// MaxUnverifiedTokens caps, in pass-through mode, the distinct client
	// tokens held at once that upstream has not accepted in the last ten
	// minutes (MAX_UNVERIFIED_TOKENS, 32).
	MaxUnverifiedTokens int `env:"MAX_UNVERIFIED_TOKENS" envDefault:"32"`

	// ClientsFile names the JSON file of named clients: token digests,
	// datasource allow-lists and limits (CLIENTS_FILE, unset). Not in
	// pass-through mode. SIGHUP or a change of the file reloads it.
	ClientsFile string `env:"CLIENTS_FILE"`

	// ClientsWatchInterval is how often CLIENTS_FILE is checked for a change
	// (CLIENTS_WATCH_INTERVAL, 2s); 0 reloads it only on SIGHUP.
	ClientsWatchInterval time.Duration `env:"CLIENTS_WATCH_INTERVAL" envDefault:"2s"`

	// RateLimitEventsPerMinute and RateLimitEventsPerDay limit each
	// client token in pass-through mode, in events (RATE_LIMIT_EVENTS_PER_MINUTE,
	// RATE_LIMIT_EVENTS_PER_DAY, 0: off). The day is the UTC calendar day.
	RateLimitEventsPerMinute int64 `env:"RATE_LIMIT_EVENTS_PER_MINUTE" envDefault:"0"`
	RateLimitEventsPerDay    int64 `env:"RATE_LIMIT_EVENTS_PER_DAY" envDefault:"0"`

	// RateLimitMaxKeys bounds the clients and tokens whose counts are kept
	// (RATE_LIMIT_MAX_KEYS, 10000); a new token beyond it gets 429 until
	// one is idle.
	RateLimitMaxKeys int `env:"RATE_LIMIT_MAX_KEYS" envDefault:"10000"`

	// BufferStreamShare is the fraction of the buffer's events and bytes one
	// stream (client or token, and datasource) may hold while another
	// stream is sending (BUFFER_STREAM_SHARE, 0.5); 1 turns it off.
	BufferStreamShare float64 `env:"BUFFER_STREAM_SHARE" envDefault:"0.5"`

	// IdempotencyWindow is how long a request's Idempotency-Key is
	// remembered (IDEMPOTENCY_WINDOW, 10m); 0 ignores the header.
	IdempotencyWindow time.Duration `env:"IDEMPOTENCY_WINDOW" envDefault:"10m"`

	// IdempotencyMaxKeys bounds the keys remembered; the oldest is
	// forgotten first (IDEMPOTENCY_MAX_KEYS, 100000).
	IdempotencyMaxKeys int `env:"IDEMPOTENCY_MAX_KEYS" envDefault:"100000"`

	// MaxConnections caps concurrent client connections (MAX_CONNECTIONS,
	// 10000).
	MaxConnections int `env:"MAX_CONNECTIONS" envDefault:"10000"`

	// MaxHeaderBytes caps a request's headers (MAX_HEADER_BYTES, 16KiB).
	MaxHeaderBytes ByteSize `env:"MAX_HEADER_BYTES" envDefault:"16KiB"`

	// MaxTokenBytes caps the length of a client's token (MAX_TOKEN_BYTES,
	// 4KiB); a longer one is refused with 403 before it is stored or sent.
	MaxTokenBytes ByteSize `env:"MAX_TOKEN_BYTES" envDefault:"4KiB"`

	// ReadTimeout is the HTTP server's read timeout (READ_TIMEOUT, 30s).
	ReadTimeout time.Duration `env:"READ_TIMEOUT" envDefault:"30s"`

	// WriteTimeout is the HTTP server's write timeout (WRITE_TIMEOUT, 30s).
	WriteTimeout time.Duration `env:"WRITE_TIMEOUT" envDefault:"30s"`

	// IdleTimeout is the HTTP server's keep-alive idle timeout (IDLE_TIMEOUT, 60s).
	IdleTimeout time.Duration `env:"IDLE_TIMEOUT" envDefault:"60s"`

	// LogLevel is the lowest level logged (LOG_LEVEL, info).
	LogLevel slog.Level `env:"LOG_LEVEL" envDefault:"info"`

	// LogFormat is "json" or "text" (LOG_FORMAT, json).
	LogFormat string `env:"LOG_FORMAT" envDefault:"json"`

	// AdminToken turns on the operator console under /-/ and is what it
	// asks for (ADMIN_TOKEN, unset: the console is off and /-/ answers
	// 404). It is secret.
	AdminToken string `env:"ADMIN_TOKEN"`

	// AdminAddr, when set, serves /metrics and /-/ on this separate
	// listener instead of the public port (ADMIN_ADDR, unset), e.g.
	// 127.0.0.1:9091.
	AdminAddr string `env:"ADMIN_ADDR"`

	// ClickHousePassword is the ClickHouse user's password
	// (CLICKHOUSE_PASSWORD, unset), for a clickhouse:// TINYBIRD_BASE_URL;
	// Load moves a password written in the URL here. It is secret.
	ClickHousePassword string `env:"CLICKHOUSE_PASSWORD"`

	// ClickHouseAllowErrorsRatio is the fraction of a batch's rows ClickHouse
	// may skip as unparsable, reported as quarantined
	// (CLICKHOUSE_ALLOW_ERRORS_RATIO, 0), in [0, 1].
	ClickHouseAllowErrorsRatio float64 `env:"CLICKHOUSE_ALLOW_ERRORS_RATIO" envDefault:"0"`
}

const fileScheme = "file://"

// Load reads the configuration from environ, a map from variable name to
// value such as env.ToMap(os.Environ()) builds; a nil map means an empty
// environment, never the process's own. Unset or empty variables take their
// defaults. On error Load returns the zero Config and every problem found,
// joined with errors.Join, one line per variable.
func Load(environ map[string]string) (Config, error) {
	if environ == nil {
		// env.ParseWithOptions falls back to os.Environ for a nil map.
		environ = map[string]string{}
	}
	var c Config
	err := env.ParseWithOptions(&c, env.Options{
		Environment: environ,
		FuncMap:     map[reflect.Type]env.ParserFunc{reflect.TypeFor[time.Duration](): parseDuration},
	})
	errs, failed := parseErrors(err, environ)

	c.TinybirdToken = strings.TrimSpace(c.TinybirdToken)
	c.AdminToken = strings.TrimSpace(c.AdminToken)
	c.AuthorizationTokens = cleanList(c.AuthorizationTokens)
	c.CORSAllowedOrigins = cleanList(c.CORSAllowedOrigins)
	c.LogFormat = strings.ToLower(c.LogFormat)
	c.UpstreamEncoding = strings.ToLower(c.UpstreamEncoding)
	base, err := normalizeBaseURL(c.TinybirdBaseURL)
	if err != nil {
		errs = append(errs, fmt.Errorf("TINYBIRD_BASE_URL: %w", err))
	}
	c.TinybirdBaseURL = base
	errs = append(errs, c.takeClickHousePassword()...)

	errs = append(errs, c.validate(failed)...)
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// ProxyTokenMode reports whether TINYBIRD_TOKEN is set, so the proxy sends
// its own token upstream. False means pass-through mode: each client's token
// goes upstream.
func (c Config) ProxyTokenMode() bool {
	return c.TinybirdToken != ""
}

// ClientTokensUpstream reports whether each client's own token goes
// upstream with its events (pass-through mode): TINYBIRD_TOKEN is unset and
// the upstream is Tinybird, not the file sink or ClickHouse, which take no
// client tokens. Every part of the proxy that keys, stores or checks tokens
// asks this one question.
func (c Config) ClientTokensUpstream() bool {
	return !c.ProxyTokenMode() && c.Upstream().Kind == UpstreamTinybird
}

// FileSinkDir returns the directory of a TINYBIRD_BASE_URL of the form
// file://<dir>, which is everything after "file://": file://./events gives
// "./events" and file:///var/lib/x gives "/var/lib/x". False means events go
// to an HTTP upstream.
func (c Config) FileSinkDir() (string, bool) {
	return strings.CutPrefix(c.TinybirdBaseURL, fileScheme)
}

// LogValue implements [slog.LogValuer] for a start-up log line. It shows
// whether TINYBIRD_TOKEN is set and how many AUTHORIZATION_TOKEN values there
// are, never the tokens, and replaces any user information in the base URL
// and in QUEUE_URL with REDACTED (redact.URL). Sizes and durations are
// strings such as "10MiB" and "30s".
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("port", c.Port),
		slog.Bool("tinybird_token_set", c.TinybirdToken != ""),
		slog.String("tinybird_base_url", redact.URL(c.TinybirdBaseURL)),
		slog.Int("authorization_token_count", len(c.AuthorizationTokens)),
		slog.Bool("allow_unauthenticated", c.AllowUnauthenticated),
		slog.Int("batch_size", c.BatchSize),
		slog.String("batch_max_bytes", c.BatchMaxBytes.String()),
		slog.Int("buffer_size", c.BufferSize),
		slog.String("buffer_max_bytes", c.BufferMaxBytes.String()),
		slog.Float64("buffer_high_watermark", c.BufferHighWatermark),
		slog.String("flush_interval", c.FlushInterval.String()),
		slog.String("max_body_bytes", c.MaxBodyBytes.String()),
		slog.Bool("upstream_wait", c.UpstreamWait),
		slog.String("upstream_encoding", c.UpstreamEncoding),
		slog.Int("upstream_concurrency", c.UpstreamConcurrency),
		slog.String("upstream_timeout", c.UpstreamTimeout.String()),
		slog.String("retry_min_backoff", c.RetryMinBackoff.String()),
		slog.String("retry_max_backoff", c.RetryMaxBackoff.String()),
		slog.String("shutdown_timeout", c.ShutdownTimeout.String()),
		slog.String("shutdown_delay", c.ShutdownDelay.String()),
		slog.String("wait_timeout", c.WaitTimeout.String()),
		slog.String("token_deny_ttl", c.TokenDenyTTL.String()),
		slog.String("dead_letter_dir", c.DeadLetterDir),
		slog.String("spool_dir", c.SpoolDir),
		slog.String("spool_segment_bytes", c.SpoolSegmentBytes.String()),
		slog.String("spool_max_bytes", c.SpoolMaxBytes.String()),
		slog.String("spool_fsync", c.SpoolFsync),
		slog.String("spool_fsync_interval", c.SpoolFsyncInterval.String()),
		slog.String("queue_url", redact.URLs(c.QueueURL)),
		slog.String("queue_stream", c.QueueStream),
		slog.String("queue_subject", c.QueueSubject),
		slog.Int("queue_replicas", c.QueueReplicas),
		slog.String("queue_max_bytes", c.QueueMaxBytes.String()),
		slog.String("queue_max_age", c.QueueMaxAge.String()),
		slog.String("queue_ack_wait", c.QueueAckWait.String()),
		slog.Int("queue_max_deliver", c.QueueMaxDeliver),
		slog.Bool("queue_creds_set", c.QueueCreds != ""),
		slog.String("queue_tls_ca", c.QueueTLSCA),
		slog.Bool("passthrough", c.Passthrough),
		slog.Any("cors_allowed_origins", c.CORSAllowedOrigins),
		slog.Bool("ready_requires_upstream", c.ReadyRequiresUpstream),
		slog.Int("max_datasources", c.MaxDatasources),
		slog.Int("max_unverified_tokens", c.MaxUnverifiedTokens),
		slog.String("clients_file", c.ClientsFile),
		slog.String("clients_watch_interval", c.ClientsWatchInterval.String()),
		slog.Int64("rate_limit_events_per_minute", c.RateLimitEventsPerMinute),
		slog.Int64("rate_limit_events_per_day", c.RateLimitEventsPerDay),
		slog.Int("rate_limit_max_keys", c.RateLimitMaxKeys),
		slog.Float64("buffer_stream_share", c.BufferStreamShare),
		slog.String("idempotency_window", c.IdempotencyWindow.String()),
		slog.Int("idempotency_max_keys", c.IdempotencyMaxKeys),
		slog.Int("max_connections", c.MaxConnections),
		slog.String("request_memory_bytes", c.RequestMemoryBytes.String()),
		slog.String("max_header_bytes", c.MaxHeaderBytes.String()),
		slog.String("max_token_bytes", c.MaxTokenBytes.String()),
		slog.String("read_timeout", c.ReadTimeout.String()),
		slog.String("write_timeout", c.WriteTimeout.String()),
		slog.String("idle_timeout", c.IdleTimeout.String()),
		slog.String("log_level", c.LogLevel.String()),
		slog.String("log_format", c.LogFormat),
		slog.Bool("clickhouse_password_set", c.ClickHousePassword != ""),
		slog.Bool("admin_token_set", c.AdminToken != ""),
		slog.String("admin_addr", c.AdminAddr),
		slog.Float64("clickhouse_allow_errors_ratio", c.ClickHouseAllowErrorsRatio),
	)
}

// isSecret reports whether the variable's value must never appear in an
// error or a log line.
func isSecret(key string) bool {
	return key == "TINYBIRD_TOKEN" || key == "AUTHORIZATION_TOKEN" || key == "CLICKHOUSE_PASSWORD" || key == "QUEUE_URL" || key == "ADMIN_TOKEN"
}

// parseDuration replaces env's duration parser, whose message repeats the
// value inside "unable to parse duration: time: invalid duration".
func parseDuration(s string) (any, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return nil, fmt.Errorf("invalid duration %q (want a Go duration such as 30s or 250ms)", s)
	}
	return d, nil
}

// cleanList trims each item and drops the empty ones; it returns nil when
// nothing is left.
func cleanList(items []string) []string {
	var out []string
	for _, s := range items {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// normalizeBaseURL checks a TINYBIRD_BASE_URL value and returns it without a
// trailing slash. Its errors never repeat the URL, which may hold a password.
func normalizeBaseURL(raw string) (string, error) {
	const want = "want http://<host>, https://<host>, clickhouse://<host>/<database> or file://<dir>"
	if isClickHouseURL(raw) {
		return normalizeClickHouseURL(raw)
	}
	if len(raw) >= len(fileScheme) && strings.EqualFold(raw[:len(fileScheme)], fileScheme) {
		dir := raw[len(fileScheme):]
		if dir == "" {
			return "", errors.New("file:// needs a directory, such as file://./events or file:///var/lib/tbproxy")
		}
		return fileScheme + dir, nil
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return "", fmt.Errorf("not a valid URL; %s", want)
	case u.Scheme != "http" && u.Scheme != "https":
		if u.Scheme != "" && u.Opaque == "" {
			return "", fmt.Errorf("unsupported scheme %q; %s", u.Scheme, want)
		}
		return "", fmt.Errorf("unsupported URL; %s", want)
	case u.Host == "":
		return "", fmt.Errorf("missing host; %s", want)
	case u.User != nil:
		// Credentials belong in TINYBIRD_TOKEN, never in a URL that is logged.
		return "", errors.New("must not contain user information (user:password@)")
	case u.RawQuery != "" || u.Fragment != "":
		// The flusher appends /v0/events?name=…, and a token in the query
		// would end up in logs; it belongs in TINYBIRD_TOKEN.
		return "", errors.New("must not contain a query or fragment")
	}
	return strings.TrimRight(raw, "/"), nil
}

// parseErrors turns the error from env.ParseWithOptions into one error per
// variable, each starting with the variable's name, and returns the set of
// variables that failed to parse so validation can skip them.
func parseErrors(err error, environ map[string]string) ([]error, map[string]bool) {
	failed := map[string]bool{}
	if err == nil {
		return nil, failed
	}
	var all []error
	var agg env.AggregateError
	if errors.As(err, &agg) {
		all = agg.Errors
	} else {
		all = []error{err}
	}
	var errs []error
	for _, e := range all {
		var pe env.ParseError
		if !errors.As(e, &pe) {
			errs = append(errs, e) // a programming error in Config, such as a bad tag
			continue
		}
		key := envKey(pe.Name)
		failed[key] = true
		errs = append(errs, fmt.Errorf("%s: %s", key, describeParseError(key, pe, environ[key])))
	}
	return errs, failed
}

// describeParseError explains why value did not parse, in the same words
// whatever the Go type, and never repeats a secret value.
func describeParseError(key string, pe env.ParseError, value string) string {
	if isSecret(key) {
		return "invalid value"
	}
	var num *strconv.NumError
	switch {
	case pe.Type == reflect.TypeFor[slog.Level]():
		return fmt.Sprintf("invalid level %q (want debug, info, warn or error)", value)
	case errors.As(pe.Err, &num) && num.Func == "ParseBool":
		return fmt.Sprintf("invalid boolean %q (want true or false)", num.Num)
	case errors.As(pe.Err, &num):
		kind := "integer"
		if num.Func == "ParseFloat" {
			kind = "number"
		}
		if errors.Is(num.Err, strconv.ErrRange) {
			return fmt.Sprintf("%s %q out of range", kind, num.Num)
		}
		return fmt.Sprintf("invalid %s %q", kind, num.Num)
	}
	return pe.Err.Error()
}

// envKey returns the variable behind the Config field called name, or name
// itself if there is no such field.
func envKey(name string) string {
	f, ok := reflect.TypeFor[Config]().FieldByName(name)
	if !ok {
		return name
	}
	key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
	return key
}
