package console

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"regexp"
)

// page is the operator console: one HTML document with its CSS and
// JavaScript inline, so serving it is one handler and it works offline.
//
//go:embed page.html
var page []byte

// Page returns the console's page, to serve at GET /-/status: it polls
// api/streams (relative to its own URL, so /-/api/streams) every second and
// posts to api/flush, api/pause and api/resume. The bytes are shared: do not
// modify them.
func Page() []byte { return page }

// pageCSP allows the page's own inline script and style (by hash, not
// 'unsafe-inline') and requests to its own origin, nothing else: if a
// datasource name or an upstream error ever got past the page's textContent
// rendering, it still could not run or load anything.
var pageCSP = func() string {
	hash := func(tag string) string {
		m := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`).FindSubmatch(page)
		if m == nil {
			panic("console: page.html has no <" + tag + ">")
		}
		sum := sha256.Sum256(m[1])
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return "default-src 'none'; script-src " + hash("script") + "; style-src " + hash("style") +
		"; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// PageCSP returns a Content-Security-Policy header value for Page: optional,
// but it makes script injection through the page inert.
func PageCSP() string { return pageCSP }
