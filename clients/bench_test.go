package clients

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
)

// benchToken returns the i'th benchmark token: 180 bytes, the size of a
// Tinybird token (a JWT).
func benchToken(i int) []byte {
	t := fmt.Sprintf("p.eyJ1IjogImNsaWVudC0lZCJ9.%06d.", i)
	return []byte(t + strings.Repeat("x", 180-len(t)))
}

// BenchmarkLookup measures finding a client by token among 1,000, found
// and not, beside its baseline: the SHA-256 of the token alone, which
// Lookup cannot avoid.
//
// Recommended CLI invocation:
//
//	go test ./clients -run '^$' -bench BenchmarkLookup -benchmem -count 5
func BenchmarkLookup(b *testing.B) {
	const n = 1000
	objects := make([]string, n)
	for i := range objects {
		objects[i] = fmt.Sprintf(`{"name": "client-%d", "token_sha256": "%x"}`, i, sha256.Sum256(benchToken(i)))
	}
	s := mustParse(b, clientsFile(objects...))
	found, missing := benchToken(n/2), benchToken(n)
	b.Run("found", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if s.Lookup(found) == nil {
				b.Fatal("not found")
			}
		}
	})
	b.Run("missing", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if s.Lookup(missing) != nil {
				b.Fatal("found")
			}
		}
	})
	b.Run("baseline=sha256", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = sha256.Sum256(found)
		}
	})
}

// BenchmarkAllows measures a client's allow-list check, for an exact name,
// a prefix and a refusal.
//
// Recommended CLI invocation:
//
//	go test ./clients -run '^$' -bench BenchmarkAllows -benchmem -count 5
func BenchmarkAllows(b *testing.B) {
	s := mustParse(b, clientsFile(client("web", `, "datasources": ["page_views", "sessions", "errors", "audit_*", "api_*"]`)))
	c := s.Clients()[0]
	for _, ds := range []string{"errors", "api_requests", "billing_events"} {
		name := []byte(ds)
		b.Run(ds, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.Allows(name)
			}
		})
	}
}
