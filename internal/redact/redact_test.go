package redact

import "testing"

// TestRedact: user information never survives, in one URL (URL) or a
// comma-separated list (URLs, as QUEUE_URL); everything else is kept.
func TestRedact(t *testing.T) {
	for _, tc := range []struct {
		name     string
		list     bool // URLs, else URL
		in, want string
	}{
		{"user and password", false, "nats://user:secret@h:4222", "nats://REDACTED@h:4222"},
		{"bare user, a token", false, "tls://tok@h", "tls://REDACTED@h"},
		{"password nats already masked", false, "nats://user:xxxxx@127.0.0.1:4222", "nats://REDACTED@127.0.0.1:4222"},
		{"path kept", false, "clickhouse://writer:pw@db:8123/analytics", "clickhouse://REDACTED@db:8123/analytics"},
		{"no user information", false, "nats://h:4222", "nats://h:4222"},
		{"https base URL", false, "https://api.tinybird.co", "https://api.tinybird.co"},
		{"file sink directory", false, "file://./events", "file://./events"},
		{"unparsable with credentials", false, "nats://u:p@h:port", "(unparsable)"},
		{"unparsable, no '@'", false, "file://my events", "file://my events"},
		{"empty", false, "", ""},
		{"list of one", true, "nats://u:secret@h1:4222", "nats://REDACTED@h1:4222"},
		{"several NATS URLs, spaces trimmed", true, "nats://u:secret@h1:4222, nats://h2:4222 ,tls://tok@h3:4222",
			"nats://REDACTED@h1:4222,nats://h2:4222,tls://REDACTED@h3:4222"},
		{"one unparsable among them", true, "nats://h1:4222,nats://u:p@h2:x", "nats://h1:4222,(unparsable)"},
		{"empty items kept", true, "nats://h1:4222,,nats://h2:4222", "nats://h1:4222,,nats://h2:4222"},
		{"empty list", true, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			redact, name := URL, "URL"
			if tc.list {
				redact, name = URLs, "URLs"
			}
			if got := redact(tc.in); got != tc.want {
				t.Errorf("%s(%q) = %q; want %q", name, tc.in, got, tc.want)
			}
		})
	}
}
