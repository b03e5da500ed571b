package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// ClickHouse is the server a TINYBIRD_BASE_URL of the form
// clickhouse://[user[:password]@]host[:port]/database points at
// (clickhouses:// for TLS): the proxy writes each datasource into the table
// of that name in Database, over ClickHouse's HTTP interface.
type ClickHouse struct {
	// TLS is true for clickhouses://.
	TLS bool
	// Addr is host:port; the port defaults to 8123, or 8443 with TLS.
	Addr string
	// User is the URL's user, "default" if it names none.
	User string
	// Password is the URL's password or CLICKHOUSE_PASSWORD. It is secret.
	Password string
	// Database is the URL's path, "default" if it has none.
	Database string
}

const (
	clickhouseScheme  = "clickhouse"
	clickhousesScheme = "clickhouses"
)

// ClickHouse returns the server TINYBIRD_BASE_URL points at, with the
// password from CLICKHOUSE_PASSWORD. False means TINYBIRD_BASE_URL is not a
// clickhouse:// or clickhouses:// URL.
func (c Config) ClickHouse() (ClickHouse, bool) {
	if !isClickHouseURL(c.TinybirdBaseURL) {
		return ClickHouse{}, false
	}
	ch, err := parseClickHouseURL(c.TinybirdBaseURL)
	if err != nil {
		return ClickHouse{}, false // Load refuses such a URL
	}
	ch.Password = c.ClickHousePassword
	return ch, true
}

// isClickHouseURL reports whether raw starts with clickhouse:// or
// clickhouses://, in any case.
func isClickHouseURL(raw string) bool {
	scheme, _, ok := strings.Cut(raw, "://")
	return ok && (strings.EqualFold(scheme, clickhouseScheme) || strings.EqualFold(scheme, clickhousesScheme))
}

// parseClickHouseURL splits a clickhouse:// URL. Its errors never repeat
// the URL, which may hold a password (url.Parse's errors do).
func parseClickHouseURL(raw string) (ClickHouse, error) {
	const want = "want clickhouse://[user[:password]@]host[:port]/database or clickhouses://…"
	u, err := url.Parse(raw)
	if err != nil {
		return ClickHouse{}, fmt.Errorf("not a valid URL; %s", want)
	}
	ch := ClickHouse{TLS: strings.EqualFold(u.Scheme, clickhousesScheme), User: "default", Database: "default"}
	port := "8123"
	if ch.TLS {
		port = "8443"
	}
	switch {
	case u.Hostname() == "":
		return ClickHouse{}, fmt.Errorf("missing host; %s", want)
	case u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return ClickHouse{}, fmt.Errorf("must not contain a query or fragment; %s", want)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return ClickHouse{}, fmt.Errorf("invalid port; %s", want)
		}
		port = p
	}
	ch.Addr = net.JoinHostPort(u.Hostname(), port)
	if u.User != nil {
		if name := u.User.Username(); name != "" {
			ch.User = name
		}
		ch.Password, _ = u.User.Password()
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		if strings.Contains(db, "/") {
			return ClickHouse{}, fmt.Errorf("the path must be one database name; %s", want)
		}
		ch.Database = db
	}
	for _, r := range ch.Database {
		if r < ' ' || r == 0x7f {
			return ClickHouse{}, errors.New("the database name must not contain control characters")
		}
	}
	return ch, nil
}

// normalizeClickHouseURL checks a clickhouse:// TINYBIRD_BASE_URL and returns
// it in a canonical form: lowercase scheme, explicit port and database.
func normalizeClickHouseURL(raw string) (string, error) {
	ch, err := parseClickHouseURL(raw)
	if err != nil {
		return "", err
	}
	return ch.url(true), nil
}

// url rebuilds the URL, with the password only if withPassword.
func (ch ClickHouse) url(withPassword bool) string {
	u := url.URL{Scheme: clickhouseScheme, Host: ch.Addr, Path: "/" + ch.Database}
	if ch.TLS {
		u.Scheme = clickhousesScheme
	}
	switch {
	case withPassword && ch.Password != "":
		u.User = url.UserPassword(ch.User, ch.Password)
	default:
		u.User = url.User(ch.User)
	}
	return u.String()
}

// takeClickHousePassword moves a password in a clickhouse:// TINYBIRD_BASE_URL
// into ClickHousePassword, so the URL that is kept, compared and logged
// holds none. A password in both places is an error.
func (c *Config) takeClickHousePassword() []error {
	if !isClickHouseURL(c.TinybirdBaseURL) {
		return nil
	}
	ch, err := parseClickHouseURL(c.TinybirdBaseURL)
	if err != nil {
		return nil // normalizeBaseURL reported it
	}
	c.TinybirdBaseURL = ch.url(false)
	if ch.Password == "" {
		return nil
	}
	if c.ClickHousePassword != "" {
		return []error{errors.New("CLICKHOUSE_PASSWORD: set, but TINYBIRD_BASE_URL has a password too; keep one of them")}
	}
	c.ClickHousePassword = ch.Password
	return nil
}

// validateClickHouse checks the rules of the ClickHouse upstream: clients
// authenticate to the proxy (there is no pass-through of client tokens to
// ClickHouse), TINYBIRD_TOKEN has no use, and the ClickHouse variables go
// only with a clickhouse:// URL. up is c.Upstream().
func (c Config) validateClickHouse(v *validator, up Upstream) {
	v.check(c.ClickHouseAllowErrorsRatio >= 0 && c.ClickHouseAllowErrorsRatio <= 1, "CLICKHOUSE_ALLOW_ERRORS_RATIO",
		"must be between 0 and 1, got %g", c.ClickHouseAllowErrorsRatio)
	if up.Kind != UpstreamClickHouse {
		if c.TinybirdBaseURL != "" {
			v.check(c.ClickHousePassword == "", "CLICKHOUSE_PASSWORD", "is set, but TINYBIRD_BASE_URL is not a clickhouse:// URL")
			v.check(c.ClickHouseAllowErrorsRatio == 0, "CLICKHOUSE_ALLOW_ERRORS_RATIO", "is set, but TINYBIRD_BASE_URL is not a clickhouse:// URL")
		}
		return
	}
	v.check(c.TinybirdToken == "", "TINYBIRD_TOKEN", "is not used with a clickhouse:// TINYBIRD_BASE_URL "+
		"(the proxy writes with the ClickHouse user in the URL); unset it")
	if len(c.AuthorizationTokens) == 0 && !c.AllowUnauthenticated && v.ok("AUTHORIZATION_TOKEN", "ALLOW_UNAUTHENTICATED") {
		v.check(false, "AUTHORIZATION_TOKEN", "required with a clickhouse:// TINYBIRD_BASE_URL: "+
			"set AUTHORIZATION_TOKEN to the comma-separated tokens your clients will send, "+
			"or set ALLOW_UNAUTHENTICATED=true to let anyone who can reach the proxy write into ClickHouse")
	}
}
