package clients

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"slices"
)

// Client is one named client from the file. Parse builds it; it is
// immutable afterwards and safe for concurrent use. Callers must not modify
// its fields: Allows answers from patterns compiled when it was built.
type Client struct {
	// Name is the client's name, as in the file.
	Name string
	// Datasources are the client's allow-list patterns, as written in the
	// file; nil means any datasource.
	Datasources []string
	// EventsPerMinute is how many events the client may send per minute;
	// 0 means no per-minute limit.
	EventsPerMinute int64
	// EventsPerDay is how many events the client may send per day; 0 means
	// no daily quota.
	EventsPerDay int64

	digest        [sha256.Size]byte // SHA-256 of the client's token
	anyDatasource bool              // Datasources is empty or holds "*"
	// exact holds the patterns without '*'; nil when there are none.
	exact map[string]struct{}
	// prefixes holds the patterns ending in '*', without it.
	prefixes []string
}

// Allows reports whether the client may write to datasource: whether it
// equals one of the client's patterns, or starts with one that ends in '*'
// ("*" alone matches every name). A client without patterns may write
// anywhere. It does not check that datasource is a valid name, and does not
// retain it. It allocates nothing.
func (c *Client) Allows(datasource []byte) bool {
	if c.anyDatasource {
		return true
	}
	if _, ok := c.exact[string(datasource)]; ok { // the compiler does not copy datasource for a map index
		return true
	}
	for _, p := range c.prefixes {
		if len(datasource) >= len(p) && string(datasource[:len(p)]) == p {
			return true
		}
	}
	return false
}

// Limited reports whether either of the client's limits is set.
func (c *Client) Limited() bool {
	return c.EventsPerMinute > 0 || c.EventsPerDay > 0
}

// compile builds the client's matchers from its Datasources, which Parse
// has validated.
func (c *Client) compile() {
	c.anyDatasource = len(c.Datasources) == 0
	for _, p := range c.Datasources {
		switch {
		case p == "*":
			c.anyDatasource = true
		case p[len(p)-1] == '*':
			c.prefixes = append(c.prefixes, p[:len(p)-1])
		default:
			if c.exact == nil {
				c.exact = make(map[string]struct{}, len(c.Datasources))
			}
			c.exact[p] = struct{}{}
		}
	}
}

// Set is the named clients of one file. It is immutable once built and safe
// for concurrent use. A nil *Set has no clients.
type Set struct {
	clients  []*Client                     // file order
	byDigest map[[sha256.Size]byte]*Client // by token digest
}

// Lookup returns the client whose token_sha256 is the SHA-256 of token, or
// nil if there is none, the token is empty, or s is nil. It hashes token
// once, finds the candidate by digest and confirms it with
// subtle.ConstantTimeCompare, so its timing says nothing about the token
// beyond its length (the map compares digests, which an attacker cannot aim).
// It does not retain token, and allocates nothing.
func (s *Set) Lookup(token []byte) *Client {
	if s == nil || len(token) == 0 {
		return nil
	}
	sum := sha256.Sum256(token)
	c := s.byDigest[sum]
	if c == nil || subtle.ConstantTimeCompare(sum[:], c.digest[:]) != 1 {
		return nil
	}
	return c
}

// Clients returns the set's clients in file order, in a new slice the caller
// owns; the clients themselves must not be modified. A nil Set returns nil.
func (s *Set) Clients() []*Client {
	if s == nil {
		return nil
	}
	return slices.Clone(s.clients)
}

// Len returns how many clients the set has; 0 for a nil Set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.clients)
}

// HashToken returns the lowercase hex SHA-256 of token: what a client's
// token_sha256 holds. It does not retain token.
func HashToken(token []byte) string {
	sum := sha256.Sum256(token)
	return hex.EncodeToString(sum[:])
}
