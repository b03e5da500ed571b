package config

import (
	"bytes"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	want := Config{
		Port:                 8080,
		TinybirdBaseURL:      "https://api.tinybird.co",
		BatchSize:            100000,
		BatchMaxBytes:        10 << 20,
		BufferSize:           1000000,
		BufferMaxBytes:       512 << 20,
		BufferHighWatermark:  0.9,
		FlushInterval:        Millis(time.Second),
		MaxBodyBytes:         10 << 20,
		UpstreamWait:         true,
		UpstreamEncoding:     "gzip",
		UpstreamConcurrency:  4,
		UpstreamTimeout:      30 * time.Second,
		RetryMinBackoff:      100 * time.Millisecond,
		RetryMaxBackoff:      10 * time.Second,
		ShutdownTimeout:      30 * time.Second,
		WaitTimeout:          10 * time.Second,
		TokenDenyTTL:         time.Minute,
		Passthrough:          true,
		SpoolSegmentBytes:    64 << 20,
		SpoolMaxBytes:        4 << 30,
		SpoolFsync:           "interval",
		SpoolFsyncInterval:   100 * time.Millisecond,
		QueueStream:          "TBPROXY",
		QueueSubject:         "tbproxy.events",
		QueueReplicas:        1,
		QueueMaxBytes:        4 << 30,
		QueueMaxAge:          168 * time.Hour,
		QueueAckWait:         30 * time.Second,
		QueueMaxDeliver:      10,
		CORSAllowedOrigins:   []string{"*"},
		MaxDatasources:       1000,
		MaxUnverifiedTokens:  32,
		ClientsWatchInterval: 2 * time.Second,
		RateLimitMaxKeys:     10000,
		BufferStreamShare:    0.5,
		IdempotencyWindow:    10 * time.Minute,
		IdempotencyMaxKeys:   100000,
		MaxConnections:       10000,
		MaxHeaderBytes:       16 << 10,
		MaxTokenBytes:        4 << 10,
		RequestMemoryBytes:   128 << 20,
		ReadTimeout:          30 * time.Second,
		WriteTimeout:         30 * time.Second,
		IdleTimeout:          60 * time.Second,
		LogLevel:             slog.LevelInfo,
		LogFormat:            "json",
	}
	for name, environ := range map[string]map[string]string{
		"nil":   nil,
		"empty": {},
		// An empty variable means "use the default", as with caarlos0/env.
		"empty values": {"PORT": "", "FLUSH_INTERVAL": "", "TINYBIRD_BASE_URL": "", "LOG_LEVEL": ""},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := Load(environ)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %+v; want %+v", got, want)
			}
			if got.ProxyTokenMode() {
				t.Errorf("ProxyTokenMode() = true; want false")
			}
			if dir, ok := got.FileSinkDir(); ok {
				t.Errorf("FileSinkDir() = %q, true; want false", dir)
			}
		})
	}
}

func TestLoadValid(t *testing.T) {
	t.Parallel()
	proxy := func(kv ...string) map[string]string {
		m := map[string]string{"TINYBIRD_TOKEN": "p.upstream", "AUTHORIZATION_TOKEN": "client"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name    string
		environ map[string]string
		get     func(Config) any
		want    any
	}{
		{"port 0", map[string]string{"PORT": "0"}, func(c Config) any { return c.Port }, 0},
		{"port max", map[string]string{"PORT": "65535"}, func(c Config) any { return c.Port }, 65535},
		{"token trimmed", proxy("TINYBIRD_TOKEN", " p.abc\n"), func(c Config) any { return c.TinybirdToken }, "p.abc"},
		{"proxy-token mode", proxy(), func(c Config) any { return c.ProxyTokenMode() }, true},
		{"blank token is pass-through", map[string]string{"TINYBIRD_TOKEN": "  "}, func(c Config) any { return c.ProxyTokenMode() }, false},
		{"base URL region", map[string]string{"TINYBIRD_BASE_URL": "https://api.us-east.tinybird.co"}, func(c Config) any { return c.TinybirdBaseURL }, "https://api.us-east.tinybird.co"},
		{"base URL trailing slashes", map[string]string{"TINYBIRD_BASE_URL": "https://api.tinybird.co//"}, func(c Config) any { return c.TinybirdBaseURL }, "https://api.tinybird.co"},
		{"base URL http with port and path", map[string]string{"TINYBIRD_BASE_URL": "http://127.0.0.1:8001/tb/"}, func(c Config) any { return c.TinybirdBaseURL }, "http://127.0.0.1:8001/tb"},
		{"authorization tokens", proxy("AUTHORIZATION_TOKEN", " a, b ,,c,"), func(c Config) any { return c.AuthorizationTokens }, []string{"a", "b", "c"}},
		{"authorization tokens with the file sink", map[string]string{"AUTHORIZATION_TOKEN": "a", "TINYBIRD_BASE_URL": "file://x"}, func(c Config) any { return c.AuthorizationTokens }, []string{"a"}},
		{"allow unauthenticated", map[string]string{"ALLOW_UNAUTHENTICATED": "true"}, func(c Config) any { return c.AllowUnauthenticated }, true},
		{"allow unauthenticated 1", map[string]string{"ALLOW_UNAUTHENTICATED": "1"}, func(c Config) any { return c.AllowUnauthenticated }, true},
		{"batch size 1", map[string]string{"BATCH_SIZE": "1"}, func(c Config) any { return c.BatchSize }, 1},
		{"batch max bytes 1KiB", map[string]string{"BATCH_MAX_BYTES": "1KiB"}, func(c Config) any { return c.BatchMaxBytes }, ByteSize(1024)},
		{"batch max bytes with space", map[string]string{"BATCH_MAX_BYTES": "2 mb"}, func(c Config) any { return c.BatchMaxBytes }, ByteSize(2e6)},
		{"batch max bytes plain", map[string]string{"BATCH_MAX_BYTES": "4096"}, func(c Config) any { return c.BatchMaxBytes }, ByteSize(4096)},
		{"buffer size", map[string]string{"BUFFER_SIZE": "1"}, func(c Config) any { return c.BufferSize }, 1},
		{"buffer max bytes", map[string]string{"BUFFER_MAX_BYTES": "1GiB"}, func(c Config) any { return c.BufferMaxBytes }, ByteSize(1 << 30)},
		{"watermark 1", map[string]string{"BUFFER_HIGH_WATERMARK": "1"}, func(c Config) any { return c.BufferHighWatermark }, 1.0},
		{"watermark small", map[string]string{"BUFFER_HIGH_WATERMARK": "0.01"}, func(c Config) any { return c.BufferHighWatermark }, 0.01},
		{"flush interval bare ms", map[string]string{"FLUSH_INTERVAL": "250"}, func(c Config) any { return c.FlushInterval }, Millis(250 * time.Millisecond)},
		{"flush interval duration", map[string]string{"FLUSH_INTERVAL": "1m30s"}, func(c Config) any { return c.FlushInterval }, Millis(90 * time.Second)},
		{"max body equals buffer", map[string]string{"MAX_BODY_BYTES": "512MiB", "REQUEST_MEMORY_BYTES": "1100MiB"}, func(c Config) any { return c.MaxBodyBytes }, ByteSize(512 << 20)},
		{"upstream wait false", map[string]string{"UPSTREAM_WAIT": "false"}, func(c Config) any { return c.UpstreamWait }, false},
		{"concurrency 1", map[string]string{"UPSTREAM_CONCURRENCY": "1"}, func(c Config) any { return c.UpstreamConcurrency }, 1},
		{"concurrency 1024", map[string]string{"UPSTREAM_CONCURRENCY": "1024"}, func(c Config) any { return c.UpstreamConcurrency }, 1024},
		{"upstream timeout", map[string]string{"UPSTREAM_TIMEOUT": "5s"}, func(c Config) any { return c.UpstreamTimeout }, 5 * time.Second},
		{"retry bounds equal", map[string]string{"RETRY_MIN_BACKOFF": "1s", "RETRY_MAX_BACKOFF": "1s"}, func(c Config) any { return c.RetryMaxBackoff }, time.Second},
		{"shutdown timeout", map[string]string{"SHUTDOWN_TIMEOUT": "1m"}, func(c Config) any { return c.ShutdownTimeout }, time.Minute},
		{"shutdown delay", map[string]string{"SHUTDOWN_DELAY": "5s"}, func(c Config) any { return c.ShutdownDelay }, 5 * time.Second},
		{"read timeout", map[string]string{"READ_TIMEOUT": "10s"}, func(c Config) any { return c.ReadTimeout }, 10 * time.Second},
		{"write timeout", map[string]string{"WRITE_TIMEOUT": "10s"}, func(c Config) any { return c.WriteTimeout }, 10 * time.Second},
		{"idle timeout", map[string]string{"IDLE_TIMEOUT": "2m"}, func(c Config) any { return c.IdleTimeout }, 2 * time.Minute},
		{"log level debug", map[string]string{"LOG_LEVEL": "debug"}, func(c Config) any { return c.LogLevel }, slog.LevelDebug},
		{"log level WARN", map[string]string{"LOG_LEVEL": "WARN"}, func(c Config) any { return c.LogLevel }, slog.LevelWarn},
		{"log level error", map[string]string{"LOG_LEVEL": "error"}, func(c Config) any { return c.LogLevel }, slog.LevelError},
		{"log format text", map[string]string{"LOG_FORMAT": "text"}, func(c Config) any { return c.LogFormat }, "text"},
		{"log format TEXT", map[string]string{"LOG_FORMAT": "TEXT"}, func(c Config) any { return c.LogFormat }, "text"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(tt.environ)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := tt.get(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestLoadInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		environ map[string]string
		want    string // a prefix of one line of the error
	}{
		{"port not a number", map[string]string{"PORT": "abc"}, `PORT: invalid integer "abc"`},
		{"port too large", map[string]string{"PORT": "65536"}, `PORT: must be between 0 and 65535, got 65536`},
		{"port negative", map[string]string{"PORT": "-1"}, `PORT: must be between 0 and 65535, got -1`},
		{"port overflow", map[string]string{"PORT": "99999999999"}, `PORT: integer "99999999999" out of range`},
		{"base URL ftp", map[string]string{"TINYBIRD_BASE_URL": "ftp://x"}, `TINYBIRD_BASE_URL: unsupported scheme "ftp"; want http://<host>, https://<host>, clickhouse://<host>/<database> or file://<dir>`},
		{"base URL no scheme", map[string]string{"TINYBIRD_BASE_URL": "api.tinybird.co"}, `TINYBIRD_BASE_URL: unsupported URL; want http://<host>, https://<host>, clickhouse://<host>/<database> or file://<dir>`},
		{"base URL no host", map[string]string{"TINYBIRD_BASE_URL": "https:///v0"}, `TINYBIRD_BASE_URL: missing host`},
		{"base URL query", map[string]string{"TINYBIRD_BASE_URL": "https://api.tinybird.co?token=x"}, `TINYBIRD_BASE_URL: must not contain a query`},
		{"base URL unparsable", map[string]string{"TINYBIRD_BASE_URL": "http://a b"}, `TINYBIRD_BASE_URL: not a valid URL`},
		{"file sink without dir", map[string]string{"TINYBIRD_BASE_URL": "file://"}, `TINYBIRD_BASE_URL: file:// needs a directory`},
		{"allow unauthenticated", map[string]string{"ALLOW_UNAUTHENTICATED": "yes"}, `ALLOW_UNAUTHENTICATED: invalid boolean "yes" (want true or false)`},
		{"batch size 0", map[string]string{"BATCH_SIZE": "0"}, `BATCH_SIZE: must be at least 1, got 0`},
		{"wait timeout 0", map[string]string{"WAIT_TIMEOUT": "0s"}, `WAIT_TIMEOUT: must be greater than 0, got 0s`},
		{"spool fsync unknown", map[string]string{"SPOOL_FSYNC": "sometimes"}, `SPOOL_FSYNC: must be always, interval or never, got "sometimes"`},
		{"admin token short", map[string]string{"ADMIN_TOKEN": "short"}, `ADMIN_TOKEN: must be 16 to 4096 printable ASCII`},
		{"upstream encoding unknown", map[string]string{"UPSTREAM_ENCODING": "br"}, `UPSTREAM_ENCODING: must be gzip or zstd, got "br"`},
		{"zstd to the file sink", map[string]string{"UPSTREAM_ENCODING": "zstd", "TINYBIRD_BASE_URL": "file://x"}, `UPSTREAM_ENCODING: zstd is for a Tinybird upstream`},
		{"admin token with a space", map[string]string{"ADMIN_TOKEN": "0123456789 abcdef"}, `ADMIN_TOKEN: must be 16 to 4096 printable ASCII`},
		{"admin token a client's", map[string]string{"TINYBIRD_TOKEN": "p.up", "AUTHORIZATION_TOKEN": "client-0123456789abcdef", "ADMIN_TOKEN": "client-0123456789abcdef"}, `ADMIN_TOKEN: must differ from every AUTHORIZATION_TOKEN`},
		{"admin addr not an address", map[string]string{"ADMIN_ADDR": "localhost"}, `ADMIN_ADDR: must be host:port or :port, got "localhost"`},
		{"admin addr the public port", map[string]string{"ADMIN_ADDR": "127.0.0.1:8080"}, `ADMIN_ADDR: must not be the public PORT (8080)`},
		{"spool max below a segment", map[string]string{"SPOOL_MAX_BYTES": "1MiB"}, `SPOOL_MAX_BYTES: 1MiB must be at least SPOOL_SEGMENT_BYTES (64MiB)`},
		{"wait timeout junk", map[string]string{"WAIT_TIMEOUT": "soon"}, `WAIT_TIMEOUT: invalid duration "soon"`},
		{"token deny ttl negative", map[string]string{"TOKEN_DENY_TTL": "-1s"}, `TOKEN_DENY_TTL: must not be negative, got -1s`},
		{"batch max bytes unit", map[string]string{"BATCH_MAX_BYTES": "12XB"}, `BATCH_MAX_BYTES: invalid byte size "12XB": unknown unit "XB"`},
		{"batch max bytes small", map[string]string{"BATCH_MAX_BYTES": "1023"}, `BATCH_MAX_BYTES: must be at least 1KiB, got 1023B`},
		{"buffer size 0", map[string]string{"BUFFER_SIZE": "0"}, `BUFFER_SIZE: must be at least 1, got 0`},
		{"buffer max bytes 0", map[string]string{"BUFFER_MAX_BYTES": "0", "MAX_BODY_BYTES": "1"}, `BUFFER_MAX_BYTES: must be greater than 0, got 0B`},
		{"buffer max bytes negative", map[string]string{"BUFFER_MAX_BYTES": "-1MiB"}, `BUFFER_MAX_BYTES: invalid byte size "-1MiB": must not be negative`},
		{"watermark above 1", map[string]string{"BUFFER_HIGH_WATERMARK": "1.5"}, `BUFFER_HIGH_WATERMARK: must be greater than 0 and at most 1, got 1.5`},
		{"watermark 0", map[string]string{"BUFFER_HIGH_WATERMARK": "0"}, `BUFFER_HIGH_WATERMARK: must be greater than 0 and at most 1, got 0`},
		{"watermark NaN", map[string]string{"BUFFER_HIGH_WATERMARK": "NaN"}, `BUFFER_HIGH_WATERMARK: must be greater than 0 and at most 1, got NaN`},
		{"watermark garbage", map[string]string{"BUFFER_HIGH_WATERMARK": "high"}, `BUFFER_HIGH_WATERMARK: invalid number "high"`},
		{"flush interval garbage", map[string]string{"FLUSH_INTERVAL": "abc"}, `FLUSH_INTERVAL: invalid duration "abc"`},
		{"flush interval 0", map[string]string{"FLUSH_INTERVAL": "0"}, `FLUSH_INTERVAL: must be greater than 0, got 0s`},
		{"flush interval negative", map[string]string{"FLUSH_INTERVAL": "-5"}, `FLUSH_INTERVAL: must be greater than 0, got -5ms`},
		{"max body 0", map[string]string{"MAX_BODY_BYTES": "0"}, `MAX_BODY_BYTES: must be greater than 0, got 0B`},
		{"max body above buffer", map[string]string{"MAX_BODY_BYTES": "2MiB", "BUFFER_MAX_BYTES": "1MiB"}, `MAX_BODY_BYTES: 2MiB must not exceed BUFFER_MAX_BYTES (1MiB)`},
		{"upstream wait", map[string]string{"UPSTREAM_WAIT": "maybe"}, `UPSTREAM_WAIT: invalid boolean "maybe"`},
		{"concurrency 0", map[string]string{"UPSTREAM_CONCURRENCY": "0"}, `UPSTREAM_CONCURRENCY: must be between 1 and 1024, got 0`},
		{"concurrency 1025", map[string]string{"UPSTREAM_CONCURRENCY": "1025"}, `UPSTREAM_CONCURRENCY: must be between 1 and 1024, got 1025`},
		{"upstream timeout garbage", map[string]string{"UPSTREAM_TIMEOUT": "30"}, `UPSTREAM_TIMEOUT: invalid duration "30"`},
		{"upstream timeout 0", map[string]string{"UPSTREAM_TIMEOUT": "0s"}, `UPSTREAM_TIMEOUT: must be greater than 0, got 0s`},
		{"retry min 0", map[string]string{"RETRY_MIN_BACKOFF": "0s"}, `RETRY_MIN_BACKOFF: must be greater than 0, got 0s`},
		{"retry max below min", map[string]string{"RETRY_MIN_BACKOFF": "2s", "RETRY_MAX_BACKOFF": "1s"}, `RETRY_MAX_BACKOFF: 1s must not be less than RETRY_MIN_BACKOFF (2s)`},
		{"shutdown timeout 0", map[string]string{"SHUTDOWN_TIMEOUT": "0s"}, `SHUTDOWN_TIMEOUT: must be greater than 0, got 0s`},
		{"shutdown delay negative", map[string]string{"SHUTDOWN_DELAY": "-1s"}, `SHUTDOWN_DELAY: must not be negative, got -1s`},
		{"read timeout 0", map[string]string{"READ_TIMEOUT": "0s"}, `READ_TIMEOUT: must be greater than 0, got 0s`},
		{"write timeout 0", map[string]string{"WRITE_TIMEOUT": "0s"}, `WRITE_TIMEOUT: must be greater than 0, got 0s`},
		{"idle timeout 0", map[string]string{"IDLE_TIMEOUT": "0s"}, `IDLE_TIMEOUT: must be greater than 0, got 0s`},
		{"log level", map[string]string{"LOG_LEVEL": "loud"}, `LOG_LEVEL: invalid level "loud" (want debug, info, warn or error)`},
		{"log format", map[string]string{"LOG_FORMAT": "xml"}, `LOG_FORMAT: must be json or text, got "xml"`},
		{"request memory below one request", map[string]string{"REQUEST_MEMORY_BYTES": "40MiB"},
			`REQUEST_MEMORY_BYTES: 40MiB is less than one request of MAX_BODY_BYTES (10MiB) can hold while it is read and decoded (43MiB)`},
		{"max unverified tokens 0", map[string]string{"MAX_UNVERIFIED_TOKENS": "0"}, `MAX_UNVERIFIED_TOKENS: must be at least 1, got 0`},
		{"clients file in pass-through mode", map[string]string{"CLIENTS_FILE": "clients.json"}, `CLIENTS_FILE: names clients by the tokens they send to the proxy, but without TINYBIRD_TOKEN`},
		{"clients file on an open proxy", map[string]string{"TINYBIRD_TOKEN": "p.x", "CLIENTS_FILE": "c.json", "ALLOW_UNAUTHENTICATED": "true"}, `CLIENTS_FILE: is set with ALLOW_UNAUTHENTICATED=true`},
		{"clients watch negative", map[string]string{"CLIENTS_WATCH_INTERVAL": "-1s"}, `CLIENTS_WATCH_INTERVAL: must not be negative, got -1s`},
		{"rate limit negative", map[string]string{"RATE_LIMIT_EVENTS_PER_MINUTE": "-5"}, `RATE_LIMIT_EVENTS_PER_MINUTE: must not be negative, got -5`},
		{"rate limit with the proxy's token", map[string]string{"TINYBIRD_TOKEN": "p.x", "AUTHORIZATION_TOKEN": "a", "RATE_LIMIT_EVENTS_PER_DAY": "100"},
			`RATE_LIMIT_EVENTS_PER_DAY: limits each client's Tinybird token in pass-through mode`},
		{"rate limit max keys 0", map[string]string{"RATE_LIMIT_MAX_KEYS": "0"}, `RATE_LIMIT_MAX_KEYS: must be at least 1, got 0`},
		{"stream share 0", map[string]string{"BUFFER_STREAM_SHARE": "0"}, `BUFFER_STREAM_SHARE: must be greater than 0 and at most 1 (1 turns it off), got 0`},
		{"stream share above 1", map[string]string{"BUFFER_STREAM_SHARE": "1.5"}, `BUFFER_STREAM_SHARE: must be greater than 0 and at most 1`},
		{"idempotency window negative", map[string]string{"IDEMPOTENCY_WINDOW": "-1m"}, `IDEMPOTENCY_WINDOW: must not be negative`},
		{"idempotency max keys 0", map[string]string{"IDEMPOTENCY_MAX_KEYS": "0"}, `IDEMPOTENCY_MAX_KEYS: must be at least 1, got 0`},
		{"max token bytes small", map[string]string{"MAX_TOKEN_BYTES": "8"}, `MAX_TOKEN_BYTES: must be between 16B and 64KiB, got 8B`},
		{"client token with a space", map[string]string{"TINYBIRD_TOKEN": "p.x", "AUTHORIZATION_TOKEN": "good,bad token"},
			`AUTHORIZATION_TOKEN: token 2 of 2 is not 1 to MAX_TOKEN_BYTES (4KiB) printable ASCII characters without spaces`},
		{"client token too long", map[string]string{"TINYBIRD_TOKEN": "p.x", "AUTHORIZATION_TOKEN": strings.Repeat("t", 17), "MAX_TOKEN_BYTES": "16"},
			`AUTHORIZATION_TOKEN: token 1 of 1 is not 1 to MAX_TOKEN_BYTES (16B)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(tt.environ)
			if err == nil {
				t.Fatalf("got nil error; want %q", tt.want)
			}
			if !reflect.DeepEqual(c, Config{}) {
				t.Errorf("got %+v with the error; want the zero Config", c)
			}
			lines := strings.Split(err.Error(), "\n")
			for _, line := range lines {
				if !startsWithVariable(line) {
					t.Errorf("got line %q; want it to start with a variable name", line)
				}
			}
			if !hasLinePrefix(lines, tt.want) {
				t.Errorf("got %q; want a line starting with %q", err, tt.want)
			}
		})
	}
}

// TestLoadReportsAll checks that Load reports every problem at once, and each
// one only once even when a bad value also fails a range check.
func TestLoadReportsAll(t *testing.T) {
	t.Parallel()
	_, err := Load(map[string]string{
		"PORT":              "abc",
		"BATCH_SIZE":        "abc", // parses to 0, which must not also report "at least 1"
		"LOG_FORMAT":        "xml",
		"RETRY_MIN_BACKOFF": "abc", // must not also compare with RETRY_MAX_BACKOFF
		"TINYBIRD_BASE_URL": "ftp://x",
	})
	if err == nil {
		t.Fatal("got nil error; want four problems")
	}
	got := err.Error()
	want := `PORT: invalid integer "abc"` + "\n" +
		`BATCH_SIZE: invalid integer "abc"` + "\n" +
		`RETRY_MIN_BACKOFF: invalid duration "abc" (want a Go duration such as 30s or 250ms)` + "\n" +
		`TINYBIRD_BASE_URL: unsupported scheme "ftp"; want http://<host>, https://<host>, clickhouse://<host>/<database> or file://<dir>` + "\n" +
		`LOG_FORMAT: must be json or text, got "xml"`
	if got != want {
		t.Errorf("got %q; want %q", got, want)
	}
}

func TestLoadAuthorizationRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		environ map[string]string
		wantErr bool
	}{
		{"token without client tokens", map[string]string{"TINYBIRD_TOKEN": "p.x"}, true},
		{"only empty client tokens", map[string]string{"TINYBIRD_TOKEN": "p.x", "AUTHORIZATION_TOKEN": " , ,"}, true},
		{"explicitly not open", map[string]string{"TINYBIRD_TOKEN": "p.x", "ALLOW_UNAUTHENTICATED": "false"}, true},
		{"fix: client tokens", map[string]string{"TINYBIRD_TOKEN": "p.x", "AUTHORIZATION_TOKEN": "a,b"}, false},
		{"fix: open proxy", map[string]string{"TINYBIRD_TOKEN": "p.x", "ALLOW_UNAUTHENTICATED": "true"}, false},
		{"fix: named clients", map[string]string{"TINYBIRD_TOKEN": "p.x", "CLIENTS_FILE": "clients.json"}, false},
		{"pass-through needs neither", map[string]string{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(tt.environ)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("got %q; want no error", err)
				}
				return
			}
			if err == nil {
				t.Fatal("got nil error; want one about AUTHORIZATION_TOKEN")
			}
			got := err.Error()
			for _, want := range []string{
				"AUTHORIZATION_TOKEN: required when TINYBIRD_TOKEN is set",
				"set AUTHORIZATION_TOKEN to the comma-separated tokens your clients will send",
				"ALLOW_UNAUTHENTICATED=true to run an open proxy that spends your TINYBIRD_TOKEN for anyone who can reach it",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("got %q; want it to contain %q", got, want)
				}
			}
		})
	}
}

func TestLoadClientTokensNeedUpstreamToken(t *testing.T) {
	t.Parallel()
	_, err := Load(map[string]string{"AUTHORIZATION_TOKEN": "client-secret"})
	if err == nil || !strings.Contains(err.Error(), "AUTHORIZATION_TOKEN: is set but TINYBIRD_TOKEN is not") {
		t.Fatalf("got %v; want an AUTHORIZATION_TOKEN error that asks for TINYBIRD_TOKEN", err)
	}
	if strings.Contains(err.Error(), "client-secret") {
		t.Fatalf("error %q leaks the token", err)
	}
	// The file sink needs no upstream token, so client tokens alone are fine.
	if _, err := Load(map[string]string{"AUTHORIZATION_TOKEN": "a", "TINYBIRD_BASE_URL": "file://./events"}); err != nil {
		t.Fatalf("file sink with client tokens: got %v; want no error", err)
	}
}

func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	const (
		upstream   = "p.UPSTREAM-SECRET"
		client     = "CLIENT-SECRET"
		password   = "hunter2"
		admin      = "ADMIN-SECRET-0123456789"
		adminShort = "ADMIN-SHORT"
	)
	secrets := []string{upstream, client, password, admin, adminShort}
	broken := map[string]string{"PORT": "abc", "LOG_FORMAT": "xml", "BUFFER_HIGH_WATERMARK": "2"}
	tests := []struct {
		name    string
		environ map[string]string
		wantErr bool
	}{
		{"valid", map[string]string{"TINYBIRD_TOKEN": upstream, "AUTHORIZATION_TOKEN": client + ",other", "ADMIN_TOKEN": admin}, false},
		{"admin token short", map[string]string{"ADMIN_TOKEN": adminShort}, true},
		{"other errors", with(broken, "TINYBIRD_TOKEN", upstream, "AUTHORIZATION_TOKEN", client), true},
		{"missing client tokens", map[string]string{"TINYBIRD_TOKEN": upstream}, true},
		{"password in ftp URL", map[string]string{"TINYBIRD_BASE_URL": "ftp://user:" + password + "@host"}, true},
		{"password in URL without scheme", map[string]string{"TINYBIRD_BASE_URL": "user:" + password + "@host"}, true},
		{"password in unparsable URL", map[string]string{"TINYBIRD_BASE_URL": "https://user:" + password + "@host:port"}, true},
		{"password in URL with query", map[string]string{"TINYBIRD_BASE_URL": "https://user:" + password + "@host?token=" + upstream}, true},
		{"token in URL query", map[string]string{"TINYBIRD_BASE_URL": "https://host/?token=" + upstream}, true},
		// User information is refused: Tinybird reads the token from
		// TINYBIRD_TOKEN, and fasthttp would never send it.
		{"password in valid URL", map[string]string{"TINYBIRD_BASE_URL": "https://user:" + password + "@host"}, true},
		{"token as URL user", map[string]string{"TINYBIRD_BASE_URL": "https://" + upstream + "@host"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(tt.environ)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v; want error %v", err != nil, tt.wantErr)
			}
			var out bytes.Buffer
			if err != nil {
				out.WriteString(err.Error())
			}
			slog.New(slog.NewJSONHandler(&out, nil)).Info("start", "config", c)
			slog.New(slog.NewTextHandler(&out, nil)).Info("start", "config", c)
			for _, s := range secrets {
				if strings.Contains(out.String(), s) {
					t.Errorf("got %q; want no %q in it", out.String(), s)
				}
			}
		})
	}
}

func TestLogValue(t *testing.T) {
	t.Parallel()
	c, err := Load(map[string]string{"TINYBIRD_TOKEN": "p.x", "AUTHORIZATION_TOKEN": "a,b"})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	var out bytes.Buffer
	slog.New(slog.NewTextHandler(&out, nil)).Info("start", "config", c)
	got := out.String()
	for _, want := range []string{
		"config.tinybird_token_set=true",
		"config.authorization_token_count=2",
		"config.tinybird_base_url=https://api.tinybird.co",
		"config.batch_max_bytes=10MiB",
		"config.flush_interval=1s",
		"config.upstream_timeout=30s",
		"config.log_level=INFO",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("got %q; want it to contain %q", got, want)
		}
	}
}

func TestFileSinkDir(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url  string
		want string
	}{
		{"file://./events", "./events"},
		{"file:///var/lib/x", "/var/lib/x"},
		{"file://events", "events"},
		{"file:///", "/"},
		{"FILE://./events/", "./events/"},
		{"file://C:/events", "C:/events"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			t.Parallel()
			c, err := Load(map[string]string{"TINYBIRD_BASE_URL": tt.url})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			got, ok := c.FileSinkDir()
			if !ok || got != tt.want {
				t.Errorf("got %q, %v; want %q, true", got, ok, tt.want)
			}
		})
	}
}

// TestEveryFieldHasVariable guards the field-to-variable mapping that error
// messages rely on.
func TestEveryFieldHasVariable(t *testing.T) {
	t.Parallel()
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if got := envKey(f.Name); !startsWithVariable(got + ": ") {
			t.Errorf("got %q for field %s; want an env tag", got, f.Name)
		}
	}
}

// startsWithVariable reports whether line starts with "NAME: ", where NAME
// is an environment variable name such as FLUSH_INTERVAL.
func startsWithVariable(line string) bool {
	name, _, ok := strings.Cut(line, ": ")
	return ok && name != "" && strings.Trim(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") == ""
}

func hasLinePrefix(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// with returns a copy of m with the key-value pairs kv added.
func with(m map[string]string, kv ...string) map[string]string {
	out := make(map[string]string, len(m)+len(kv)/2)
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func TestClientTokensUpstream(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		environ map[string]string
		want    bool
	}{
		{map[string]string{}, true},
		{map[string]string{"TINYBIRD_TOKEN": "p.x", "AUTHORIZATION_TOKEN": "c"}, false},
		{map[string]string{"TINYBIRD_BASE_URL": "file://./events"}, false},
		{map[string]string{"TINYBIRD_BASE_URL": "clickhouse://h/db", "AUTHORIZATION_TOKEN": "c"}, false},
	} {
		c, err := Load(tt.environ)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ClientTokensUpstream(); got != tt.want {
			t.Errorf("%v: ClientTokensUpstream() = %v; want %v", tt.environ, got, tt.want)
		}
	}
}
