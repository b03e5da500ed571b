// Package redact removes credentials from URLs before they are logged.
package redact

import (
	"net/url"
	"strings"
)

// URL returns raw with any user information replaced by REDACTED: a
// password, and a bare user name too, which can be a token
// (nats://token@host). A URL without user information is returned as it
// is. One that does not parse and holds an '@', so might hold credentials,
// becomes "(unparsable)"; without an '@' it cannot, and is returned as it
// is (a file:// directory whose name no URL parser accepts).
func URL(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil && strings.Contains(raw, "@"):
		return "(unparsable)"
	case err != nil || u.User == nil:
		return raw
	}
	u.User = url.User("REDACTED")
	return u.String()
}

// URLs is URL for a comma-separated list of URLs, such as QUEUE_URL: each
// is trimmed of spaces and redacted, and the list joined again with commas.
func URLs(raw string) string {
	if raw == "" {
		return ""
	}
	list := strings.Split(raw, ",")
	for i, s := range list {
		list[i] = URL(strings.TrimSpace(s))
	}
	return strings.Join(list, ",")
}
