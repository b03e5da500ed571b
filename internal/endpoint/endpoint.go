// Package endpoint points fasthttp requests at a configured upstream.
//
// The scheme, host and path prefix come from configuration and are parsed
// once; a request's own path and query are then set as fields of its URI,
// never joined into a URL string. No byte a client sends can therefore
// change the host a request reaches: "@evil:1/x" after "https://api" would
// make userinfo and a new host of a concatenated string, and ".evil.com/x"
// a longer host name.
package endpoint

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/valyala/fasthttp"
)

// Endpoint is an upstream's scheme, host (with port, if any) and path
// prefix. The zero value has no host; build one with Parse. An Endpoint is
// a plain value, safe to share.
type Endpoint struct {
	scheme, host, prefix string
}

// Parse reads raw as scheme://host[:port][/prefix]. The scheme must be one
// of schemes; userinfo, a query and a fragment are refused, since they would
// be dropped or sent where nobody expects them.
func Parse(raw string, schemes ...string) (Endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Endpoint{}, fmt.Errorf("invalid URL: %w", err)
	}
	ok := false
	for _, s := range schemes {
		ok = ok || u.Scheme == s
	}
	switch {
	case !ok:
		return Endpoint{}, fmt.Errorf("the scheme must be one of %s", strings.Join(schemes, ", "))
	case u.Host == "":
		return Endpoint{}, fmt.Errorf("no host")
	case u.User != nil:
		return Endpoint{}, fmt.Errorf("user information in the URL is not supported")
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return Endpoint{}, fmt.Errorf("a query or fragment in the URL is not supported")
	}
	return Endpoint{scheme: u.Scheme, host: u.Host, prefix: strings.TrimRight(u.EscapedPath(), "/")}, nil
}

// Host returns the host and port requests go to.
func (e Endpoint) Host() string { return e.host }

// String returns the endpoint as a URL, with no path beyond its prefix.
func (e Endpoint) String() string { return e.scheme + "://" + e.host + e.prefix }

// Point sets req's target to this endpoint: its scheme and host, its path
// prefix followed by path (still percent-encoded, sent as it is; a path not
// starting with '/' gets one), and query as the raw query string (nil for
// none). The Host header follows the endpoint's host.
func (e Endpoint) Point(req *fasthttp.Request, path, query []byte) {
	u := req.URI()
	u.DisablePathNormalizing = true
	u.SetScheme(e.scheme)
	u.SetHost(e.host)
	p := make([]byte, 0, len(e.prefix)+len(path)+1)
	p = append(p, e.prefix...)
	if len(path) == 0 || path[0] != '/' {
		p = append(p, '/')
	}
	u.SetPathBytes(append(p, path...))
	u.SetQueryStringBytes(query)
	req.Header.SetHost(e.host)
}
