package clients

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// hexDigest is the SHA-256 of token in lowercase hex, computed without
// HashToken.
func hexDigest(token string) string {
	return fmt.Sprintf("%x", sha256.Sum256([]byte(token)))
}

// clientsFile returns a clients file listing the client objects given.
func clientsFile(objects ...string) string {
	return `{"clients": [` + strings.Join(objects, ",\n") + `]}`
}

// mustParse parses a clients file that must be valid.
func mustParse(t testing.TB, data string) *Set {
	t.Helper()
	s, err := Parse([]byte(data))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return s
}

func TestHashToken(t *testing.T) {
	for _, tc := range []struct{ token, want string }{
		{"secret", "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"}, // printf %s secret | sha256sum
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},       // FIPS 180-2 empty message
	} {
		if got := HashToken([]byte(tc.token)); got != tc.want {
			t.Errorf("HashToken(%q) = %q; want %q", tc.token, got, tc.want)
		}
	}
}

func TestLookup(t *testing.T) {
	s := mustParse(t, clientsFile(
		`{"name": "api-worker", "token_sha256": "`+hexDigest("tok-api")+`"}`,
		`{"name": "web", "token_sha256": "`+strings.ToUpper(hexDigest("tok-web"))+`"}`, // upper case is accepted
	))
	for _, tc := range []struct {
		token string
		want  string // client name; "" for nil
	}{
		{"tok-api", "api-worker"},
		{"tok-web", "web"},
		{"tok-API", ""},
		{"tok-api ", ""},
		{"tok-ap", ""},
		{"unknown", ""},
		{"", ""},
	} {
		c := s.Lookup([]byte(tc.token))
		got := ""
		if c != nil {
			got = c.Name
		}
		if got != tc.want {
			t.Errorf("Lookup(%q) = %q; want %q", tc.token, got, tc.want)
		}
	}
	if s.Lookup(nil) != nil {
		t.Error("Lookup(nil) is a client; want nil")
	}
}

// TestLookupEmptyTokenDigest checks that the empty token finds no client
// even in a Set built around Parse's check, so Lookup's own guard is tested.
func TestLookupEmptyTokenDigest(t *testing.T) {
	c := &Client{Name: "empty", digest: sha256.Sum256(nil)}
	s := &Set{clients: []*Client{c}, byDigest: map[[sha256.Size]byte]*Client{c.digest: c}}
	if got := s.Lookup([]byte{}); got != nil {
		t.Errorf("Lookup(empty) = %q; want nil", got.Name)
	}
}

func TestNilSet(t *testing.T) {
	var s *Set
	if c := s.Lookup([]byte("tok")); c != nil {
		t.Errorf("nil Set: Lookup = %q; want nil", c.Name)
	}
	if n := s.Len(); n != 0 {
		t.Errorf("nil Set: Len = %d; want 0", n)
	}
	if cs := s.Clients(); cs != nil {
		t.Errorf("nil Set: Clients = %v; want nil", cs)
	}
}

func TestEmptySet(t *testing.T) {
	s := mustParse(t, `{"clients": []}`)
	if n := s.Len(); n != 0 {
		t.Errorf("Len = %d; want 0", n)
	}
	if c := s.Lookup([]byte("tok")); c != nil {
		t.Errorf("Lookup = %q; want nil", c.Name)
	}
}

func TestParseClients(t *testing.T) {
	s := mustParse(t, clientsFile(
		`{"name": "api-worker", "token_sha256": "`+hexDigest("a")+`", "datasources": ["api_requests", "audit_*"],
		  "events_per_minute": 60000, "events_per_day": 50000000}`,
		`{"name": "web", "token_sha256": "`+hexDigest("w")+`", "datasources": ["page_views"], "events_per_day": 0}`,
		`{"name": "0.batch_2-x", "token_sha256": "`+hexDigest("b")+`", "datasources": null,
		  "events_per_minute": null, "events_per_day": -0}`,
		`{"name": "`+strings.Repeat("z", 64)+`", "token_sha256": "`+hexDigest("z")+`", "datasources": ["*"], "events_per_minute": 9223372036854775807}`,
	))
	type view struct {
		Name        string
		Datasources []string
		PerMinute   int64
		PerDay      int64
		Limited     bool
	}
	var got []view
	for _, c := range s.Clients() {
		got = append(got, view{c.Name, c.Datasources, c.EventsPerMinute, c.EventsPerDay, c.Limited()})
	}
	want := []view{
		{"api-worker", []string{"api_requests", "audit_*"}, 60000, 50000000, true},
		{"web", []string{"page_views"}, 0, 0, false},
		{"0.batch_2-x", nil, 0, 0, false},
		{strings.Repeat("z", 64), []string{"*"}, 9223372036854775807, 0, true},
	}
	if !slices.EqualFunc(got, want, func(a, b view) bool {
		return a.Name == b.Name && slices.Equal(a.Datasources, b.Datasources) && (a.Datasources == nil) == (b.Datasources == nil) &&
			a.PerMinute == b.PerMinute && a.PerDay == b.PerDay && a.Limited == b.Limited
	}) {
		t.Errorf("clients:\ngot  %+v\nwant %+v", got, want)
	}
	if n := s.Len(); n != 4 {
		t.Errorf("Len = %d; want 4", n)
	}
	for i, token := range []string{"a", "w", "b", "z"} {
		if c := s.Lookup([]byte(token)); c != s.Clients()[i] {
			t.Errorf("Lookup(%q) is not clients[%d]", token, i)
		}
	}
	// Clients returns a copy: changing it does not change the Set.
	cs := s.Clients()
	cs[0] = nil
	if s.Clients()[0] == nil {
		t.Error("Clients returned the Set's own slice")
	}
}

func TestLimited(t *testing.T) {
	for _, tc := range []struct {
		perMinute, perDay int64
		want              bool
	}{{0, 0, false}, {1, 0, true}, {0, 1, true}, {5, 7, true}} {
		c := Client{EventsPerMinute: tc.perMinute, EventsPerDay: tc.perDay}
		if got := c.Limited(); got != tc.want {
			t.Errorf("Limited with per minute %d, per day %d = %v; want %v", tc.perMinute, tc.perDay, got, tc.want)
		}
	}
}

func TestAllows(t *testing.T) {
	s := mustParse(t, clientsFile(
		`{"name": "mixed", "token_sha256": "`+hexDigest("1")+`", "datasources": ["api_requests", "audit_*", "Events"]}`,
		`{"name": "star", "token_sha256": "`+hexDigest("2")+`", "datasources": ["page_views", "*"]}`,
		`{"name": "any", "token_sha256": "`+hexDigest("3")+`"}`,
		`{"name": "prefix", "token_sha256": "`+hexDigest("4")+`", "datasources": ["api*"]}`,
		`{"name": "exact", "token_sha256": "`+hexDigest("5")+`", "datasources": ["page_views"]}`,
	))
	clients := map[string]*Client{}
	for _, c := range s.Clients() {
		clients[c.Name] = c
	}
	for _, tc := range []struct {
		client, datasource string
		want               bool
	}{
		{"mixed", "api_requests", true},
		{"mixed", "api_requests2", false},
		{"mixed", "api_request", false},
		{"mixed", "API_REQUESTS", false},
		{"mixed", "audit_", true},
		{"mixed", "audit_logins", true},
		{"mixed", "audit", false},
		{"mixed", "Audit_logins", false},
		{"mixed", "Events", true},
		{"mixed", "events", false},
		{"mixed", "", false},
		{"star", "anything_at_all", true},
		{"star", "", true},
		{"any", "anything_at_all", true},
		{"prefix", "api", true},
		{"prefix", "apis", true},
		{"prefix", "ap", false},
		{"prefix", "xapi", false},
		{"exact", "page_views", true},
		{"exact", "page_view", false},
		{"exact", "page_views_v2", false},
		{"exact", "", false},
	} {
		if got := clients[tc.client].Allows([]byte(tc.datasource)); got != tc.want {
			t.Errorf("%s: Allows(%q) = %v; want %v", tc.client, tc.datasource, got, tc.want)
		}
	}
}

// TestExampleFile keeps deploy/clients.example.json valid, and its digests
// those of the fake tokens "example-api-worker-token" and
// "example-web-token" (JSON has no comments to say so).
func TestExampleFile(t *testing.T) {
	s, err := Load("../deploy/clients.example.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ token, name, allowed, refused string }{
		{"example-api-worker-token", "api-worker", "audit_logins", "page_views"},
		{"example-web-token", "web", "page_views", "api_requests"},
	} {
		c := s.Lookup([]byte(tc.token))
		if c == nil || c.Name != tc.name {
			t.Errorf("Lookup(%q) = %v; want client %q", tc.token, c, tc.name)
			continue
		}
		if !c.Allows([]byte(tc.allowed)) || c.Allows([]byte(tc.refused)) {
			t.Errorf("%s: Allows(%q), Allows(%q) = %v, %v; want true, false", tc.name, tc.allowed, tc.refused,
				c.Allows([]byte(tc.allowed)), c.Allows([]byte(tc.refused)))
		}
	}
	if n := s.Len(); n != 2 {
		t.Errorf("Len = %d; want 2", n)
	}
}
