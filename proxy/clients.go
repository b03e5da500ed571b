package proxy

import (
	"crypto/sha256"
	"crypto/subtle"

	"github.com/tbproxy/tbproxy/clients"
	"github.com/valyala/fasthttp"
)

// caller is who sent a request, as far as admission cares: a named client
// from CLIENTS_FILE, or an unnamed one (an AUTHORIZATION_TOKEN, a
// pass-through Tinybird token, or nobody on an open proxy). It lives on the
// handler's stack; token aliases the request.
type caller struct {
	client *clients.Client // nil: unnamed
	token  []byte
}

// name is the client's name for logs and metrics, "" when unnamed.
func (c caller) name() string {
	if c.client == nil {
		return ""
	}
	return c.client.Name
}

// scope is who an Idempotency-Key belongs to: the client's name, or "~"
// and the hex SHA-256 of its token ('~' never starts a client's name), or
// "" without a token. It allocates: only requests with a key ask.
func (c caller) scope() string {
	switch {
	case c.client != nil:
		return c.client.Name
	case len(c.token) == 0:
		return ""
	}
	return "~" + clients.HashToken(c.token)
}

// SetClients puts set in force for every request from now on: the named
// clients of a reloaded CLIENTS_FILE. Requests in flight finish under the
// set they started with. It must not be nil when Options.Clients was set.
func (s *Server) SetClients(set *clients.Set) { s.clients.Store(set) }

// checkToken returns the named client token belongs to (nil for an unnamed
// one) when it may use the proxy, else the body of the 403 to answer. A
// token that is present must be 1 to MaxTokenBytes of printable ASCII
// without spaces, in every mode: no token has other bytes, and these would
// otherwise be forwarded, stored and spooled as they came. In pass-through
// mode any such token may use the proxy (upstream judges it); otherwise it
// must equal one of AUTHORIZATION_TOKEN's, compared in constant time and
// against every one of them, so timing reveals neither a prefix nor which
// token matched, or be a named client's (clients.Set.Lookup compares
// SHA-256 digests, in constant time too). With neither configured, anyone
// may.
func (s *Server) checkToken(token []byte) (*clients.Client, []byte) {
	if len(token) > 0 && !s.tokenShape(token) {
		return nil, s.badShape
	}
	named := s.clients.Load()
	if !s.opts.PassThrough && len(s.tokens) == 0 && named == nil {
		return nil, nil
	}
	if len(token) == 0 {
		return nil, bodyNoToken
	}
	if s.opts.PassThrough {
		return nil, nil
	}
	ok := 0
	for _, t := range s.tokens {
		ok |= subtle.ConstantTimeCompare(token, t)
	}
	if ok == 1 {
		return nil, nil
	}
	if c := named.Lookup(token); c != nil {
		return c, nil
	}
	return nil, bodyBadToken
}

// allowed refuses a named client's request for a datasource outside its
// allow-list: 403 naming the client and the datasource, never the token.
func (s *Server) allowed(ctx *fasthttp.RequestCtx, who caller, name []byte) bool {
	if who.client == nil || who.client.Allows(name) {
		return true
	}
	s.refuseClient(ctx, who, fasthttp.StatusForbidden, reasonNotAllowed,
		errorBody("client '"+who.client.Name+"' may not write to datasource '"+string(name)+"' (its datasources in CLIENTS_FILE)"), 0)
	return false
}

// tokenDigest is the SHA-256 of token, as a string: the key of a
// pass-through token's limits, so the limiter never holds a token.
func tokenDigest(token []byte) string {
	sum := sha256.Sum256(token)
	return string(sum[:])
}
