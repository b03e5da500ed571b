package config

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestClickHouseURL(t *testing.T) {
	t.Parallel()
	open := map[string]string{"AUTHORIZATION_TOKEN": "client"}
	f := func(raw string, extra map[string]string, want ClickHouse, wantURL string) {
		t.Helper()
		env := with(open, "TINYBIRD_BASE_URL", raw)
		for k, v := range extra {
			env[k] = v
		}
		c, err := Load(env)
		if err != nil {
			t.Fatalf("Load(%q): %v", raw, err)
		}
		got, ok := c.ClickHouse()
		if !ok || got != want {
			t.Errorf("ClickHouse() for %q: got %+v, %v; want %+v", raw, got, ok, want)
		}
		if c.TinybirdBaseURL != wantURL {
			t.Errorf("TinybirdBaseURL for %q: got %q; want %q (no password)", raw, c.TinybirdBaseURL, wantURL)
		}
		if _, file := c.FileSinkDir(); file || c.ProxyTokenMode() {
			t.Errorf("%q: got file sink %v, proxy-token mode %v; want neither", raw, file, c.ProxyTokenMode())
		}
	}
	f("clickhouse://localhost/analytics", nil,
		ClickHouse{Addr: "localhost:8123", User: "default", Database: "analytics"},
		"clickhouse://default@localhost:8123/analytics")
	f("clickhouse://writer:s3cret@db.internal:9000/analytics/", nil,
		ClickHouse{Addr: "db.internal:9000", User: "writer", Password: "s3cret", Database: "analytics"},
		"clickhouse://writer@db.internal:9000/analytics")
	f("ClickHouses://writer@ch.example.com", map[string]string{"CLICKHOUSE_PASSWORD": "from-env"},
		ClickHouse{TLS: true, Addr: "ch.example.com:8443", User: "writer", Password: "from-env", Database: "default"},
		"clickhouses://writer@ch.example.com:8443/default")
	f("clickhouse://w%40x:p%3Aw%2Fd@[::1]:8124/my_db", nil,
		ClickHouse{Addr: "[::1]:8124", User: "w@x", Password: "p:w/d", Database: "my_db"},
		"clickhouse://w%40x@[::1]:8124/my_db")

	// Not ClickHouse.
	c, err := Load(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.ClickHouse(); ok {
		t.Errorf("default TINYBIRD_BASE_URL: ClickHouse() = true; want false")
	}
}

func TestClickHouseInvalid(t *testing.T) {
	t.Parallel()
	const password = "pw-SECRET-77"
	base := map[string]string{"AUTHORIZATION_TOKEN": "client"}
	for _, tt := range []struct {
		name    string
		environ map[string]string
		want    string
	}{
		{"bad port", with(base, "TINYBIRD_BASE_URL", "clickhouse://u:"+password+"@host:port/db"), "TINYBIRD_BASE_URL: not a valid URL"},
		{"port out of range", with(base, "TINYBIRD_BASE_URL", "clickhouse://u:"+password+"@host:70000/db"), "TINYBIRD_BASE_URL: invalid port"},
		{"no host", with(base, "TINYBIRD_BASE_URL", "clickhouse:///db"), "TINYBIRD_BASE_URL: missing host"},
		{"query", with(base, "TINYBIRD_BASE_URL", "clickhouse://u:"+password+"@host/db?secure=1"), "TINYBIRD_BASE_URL: must not contain a query"},
		{"two path segments", with(base, "TINYBIRD_BASE_URL", "clickhouse://host/db/table"), "TINYBIRD_BASE_URL: the path must be one database name"},
		{"password twice", with(base, "TINYBIRD_BASE_URL", "clickhouse://u:"+password+"@host/db", "CLICKHOUSE_PASSWORD", password+"x"),
			"CLICKHOUSE_PASSWORD: set, but TINYBIRD_BASE_URL has a password too"},
		{"client auth required", map[string]string{"TINYBIRD_BASE_URL": "clickhouse://host/db"},
			"AUTHORIZATION_TOKEN: required with a clickhouse:// TINYBIRD_BASE_URL"},
		{"tinybird token unused", with(base, "TINYBIRD_BASE_URL", "clickhouse://host/db", "TINYBIRD_TOKEN", password),
			"TINYBIRD_TOKEN: is not used with a clickhouse:// TINYBIRD_BASE_URL"},
		{"ratio above 1", with(base, "TINYBIRD_BASE_URL", "clickhouse://host/db", "CLICKHOUSE_ALLOW_ERRORS_RATIO", "1.5"),
			"CLICKHOUSE_ALLOW_ERRORS_RATIO: must be between 0 and 1, got 1.5"},
		{"ratio not a number", with(base, "TINYBIRD_BASE_URL", "clickhouse://host/db", "CLICKHOUSE_ALLOW_ERRORS_RATIO", "lots"),
			`CLICKHOUSE_ALLOW_ERRORS_RATIO: invalid number "lots"`},
		{"password without clickhouse", map[string]string{"CLICKHOUSE_PASSWORD": password},
			"CLICKHOUSE_PASSWORD: is set, but TINYBIRD_BASE_URL is not a clickhouse:// URL"},
		{"ratio without clickhouse", map[string]string{"CLICKHOUSE_ALLOW_ERRORS_RATIO": "0.1"},
			"CLICKHOUSE_ALLOW_ERRORS_RATIO: is set, but TINYBIRD_BASE_URL is not a clickhouse:// URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(tt.environ)
			if err == nil {
				t.Fatalf("got nil error; want %q", tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if !hasLinePrefix(lines, tt.want) {
				t.Errorf("got %q; want a line starting with %q", err, tt.want)
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("error %q contains the password", err)
			}
		})
	}
}

func TestClickHouseOpenProxy(t *testing.T) {
	t.Parallel()
	c, err := Load(map[string]string{"TINYBIRD_BASE_URL": "clickhouse://host/db", "ALLOW_UNAUTHENTICATED": "true",
		"CLICKHOUSE_ALLOW_ERRORS_RATIO": "0.01"})
	if err != nil {
		t.Fatalf("ALLOW_UNAUTHENTICATED=true: got %v; want no error", err)
	}
	if c.ClickHouseAllowErrorsRatio != 0.01 {
		t.Errorf("ratio: got %g; want 0.01", c.ClickHouseAllowErrorsRatio)
	}
}

func TestClickHouseLogValueRedacts(t *testing.T) {
	t.Parallel()
	for _, environ := range []map[string]string{
		{"TINYBIRD_BASE_URL": "clickhouse://writer:pw-SECRET-1@db:8123/analytics", "AUTHORIZATION_TOKEN": "client"},
		{"TINYBIRD_BASE_URL": "clickhouses://writer@db/analytics", "CLICKHOUSE_PASSWORD": "pw-SECRET-1", "AUTHORIZATION_TOKEN": "client"},
	} {
		c, err := Load(environ)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		slog.New(slog.NewJSONHandler(&out, nil)).Info("start", "config", c)
		slog.New(slog.NewTextHandler(&out, nil)).Info("start", "config", c)
		got := out.String()
		if strings.Contains(got, "pw-SECRET-1") {
			t.Errorf("log %q contains the password", got)
		}
		for _, want := range []string{"REDACTED@db:", "/analytics", `"clickhouse_password_set":true`} {
			if !strings.Contains(got, want) {
				t.Errorf("log %q: want it to contain %q", got, want)
			}
		}
	}
}
