package config

import (
	"net/url"
	"regexp"
	"strings"
	"time"
)

// QueueURLs returns QUEUE_URL's servers, and false when the queue is off.
func (c Config) QueueURLs() ([]string, bool) {
	urls := cleanList(strings.Split(c.QueueURL, ","))
	return urls, len(urls) > 0
}

// Stream names may not hold '.', '*', '>', spaces or path separators; a
// subject prefix is dot-separated tokens of the same safe characters.
var (
	streamName    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	subjectPrefix = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// validateQueue checks the QUEUE_* variables. Its messages never repeat
// QUEUE_URL, which may hold a password.
func (c Config) validateQueue(v *validator) {
	urls, on := c.QueueURLs()
	if !on {
		return
	}
	v.check(c.SpoolDir == "", "QUEUE_URL", "cannot be combined with SPOOL_DIR: the JetStream queue is the durable store; unset one of them")
	for i, raw := range urls {
		u, err := url.Parse(raw)
		ok := err == nil && (u.Scheme == "nats" || u.Scheme == "tls") && u.Host != ""
		v.check(ok, "QUEUE_URL", "server %d is not a nats://host:port or tls://host:port URL", i+1)
	}
	v.check(streamName.MatchString(c.QueueStream), "QUEUE_STREAM", "must be 1 to 64 letters, digits, '_' or '-', got %q", c.QueueStream)
	v.check(subjectPrefix.MatchString(c.QueueSubject), "QUEUE_SUBJECT",
		"must be dot-separated tokens of letters, digits, '_' or '-' (no wildcards), got %q", c.QueueSubject)
	v.check(c.QueueReplicas >= 1 && c.QueueReplicas <= 5, "QUEUE_REPLICAS", "must be between 1 and 5, got %d", c.QueueReplicas)
	v.check(c.QueueMaxBytes >= 1<<20, "QUEUE_MAX_BYTES", "must be at least 1MiB, got %s", c.QueueMaxBytes)
	if c.QueueMaxBytes > 0 && c.MaxBodyBytes > 0 && v.ok("QUEUE_MAX_BYTES", "MAX_BODY_BYTES") {
		v.check(c.QueueMaxBytes >= c.MaxBodyBytes, "QUEUE_MAX_BYTES",
			"%s must be at least MAX_BODY_BYTES (%s), or a full request could never be stored", c.QueueMaxBytes, c.MaxBodyBytes)
	}
	v.positive("QUEUE_MAX_AGE", c.QueueMaxAge)
	v.check(c.QueueAckWait >= time.Second, "QUEUE_ACK_WAIT", "must be at least 1s, got %s", c.QueueAckWait)
	v.check(c.QueueMaxDeliver >= 2, "QUEUE_MAX_DELIVER", "must be at least 2 (one retry after a replica dies), got %d", c.QueueMaxDeliver)
}
