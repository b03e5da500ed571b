package config

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestLoadQueue(t *testing.T) {
	t.Parallel()
	const secret = "nats-pass-81c2"
	base := func(kv ...string) map[string]string {
		m := map[string]string{"QUEUE_URL": "nats://u:" + secret + "@127.0.0.1:4222, nats://h2:4222"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	c, err := Load(base())
	if err != nil {
		t.Fatal(err)
	}
	if urls, ok := c.QueueURLs(); !ok || len(urls) != 2 || urls[1] != "nats://h2:4222" {
		t.Errorf("got QueueURLs %q, %v; want two servers", urls, ok)
	}
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("start", "config", c)
	if strings.Contains(b.String(), secret) || !strings.Contains(b.String(), "REDACTED") {
		t.Errorf("got log line %s; want the NATS password redacted", b.String())
	}
	if _, ok := (Config{}).QueueURLs(); ok {
		t.Error("got the queue on with QUEUE_URL unset")
	}

	cases := []struct {
		name, wantVar string
		env           map[string]string
	}{
		{"with_spool", "QUEUE_URL", base("SPOOL_DIR", "/tmp/x")},
		{"bad_scheme", "QUEUE_URL", map[string]string{"QUEUE_URL": "http://u:" + secret + "@h:4222"}},
		{"bad_stream", "QUEUE_STREAM", base("QUEUE_STREAM", "a.b")},
		{"wildcard_subject", "QUEUE_SUBJECT", base("QUEUE_SUBJECT", "x.>")},
		{"replicas", "QUEUE_REPLICAS", base("QUEUE_REPLICAS", "0")},
		{"max_bytes", "QUEUE_MAX_BYTES", base("QUEUE_MAX_BYTES", "1KiB")},
		{"max_bytes_below_body", "QUEUE_MAX_BYTES", base("QUEUE_MAX_BYTES", "2MiB")},
		{"max_age", "QUEUE_MAX_AGE", base("QUEUE_MAX_AGE", "0s")},
		{"ack_wait", "QUEUE_ACK_WAIT", base("QUEUE_ACK_WAIT", "10ms")},
		{"max_deliver", "QUEUE_MAX_DELIVER", base("QUEUE_MAX_DELIVER", "1")},
		{"max_deliver_type", "QUEUE_MAX_DELIVER", base("QUEUE_MAX_DELIVER", "x")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(tc.env)
			if err == nil || !strings.HasPrefix(err.Error(), tc.wantVar+": ") {
				t.Fatalf("got %v; want an error starting %q", err, tc.wantVar+": ")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("got %q; it repeats the password", err)
			}
		})
	}
}
