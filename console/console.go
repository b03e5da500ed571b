// Package console is the operator console under /-/ (the prefix Prometheus
// uses for its own operational paths): a live status page, the same data
// as JSON, and the actions an operator needs during an incident or a schema
// migration: flush now, pause and resume a datasource. It is off unless
// ADMIN_TOKEN is set, and every path asks for that token.
package console

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/flusher"
	"github.com/valyala/fasthttp"
)

// Flusher is what the console reads and steers: *flusher.Flusher.
type Flusher interface {
	Streams() []flusher.StreamStats
	Pause(datasource string) bool
	Resume(datasource string) bool
	Flush(datasource string)
}

// Options configure a Console.
type Options struct {
	// Token is ADMIN_TOKEN: every request must present it as a bearer
	// token, or as the password of HTTP Basic. Required.
	Token    string
	Buffer   *buffer.Buffer
	Flusher  Flusher
	Gatherer prometheus.Gatherer // the totals are read from the metrics
	Log      *slog.Logger
}

// Console serves /-/. Create one with New, run its sampler with Run.
type Console struct {
	opts    Options
	digest  [sha256.Size]byte // of the token: compared in constant time, whatever its length
	started time.Time

	mu      sync.Mutex // protects the fields below
	totals  history
	streams map[streamKey]*streamHistory
	last    counters // the last sample's, with its rates
	// lat holds the upstream latency histogram's sum and count of the
	// last latencyWindow samples, for the mean over that window.
	lat     [latencyWindow][2]float64
	latNext int
}

// New returns a console; opts.Token must not be empty.
func New(opts Options) *Console {
	return &Console{
		opts:    opts,
		digest:  sha256.Sum256([]byte(opts.Token)),
		started: time.Now(),
		streams: make(map[streamKey]*streamHistory),
	}
}

// Handler answers every path under /-/. Paths:
//
//	GET  /-/status                      the page
//	GET  /-/api/streams[?name=ds]       Status as JSON
//	POST /-/api/flush[?name=ds]         send what is held now
//	POST /-/api/pause?name=ds           hold delivery of ds
//	POST /-/api/resume?name=ds          lift it
func (c *Console) Handler(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if !c.authorized(ctx) {
		h.Set(fasthttp.HeaderWWWAuthenticate, `Basic realm="tbproxy console", charset="UTF-8"`)
		writeJSONError(ctx, fasthttp.StatusUnauthorized, "this path needs ADMIN_TOKEN: Authorization: Bearer <token>, or Basic with the token as password")
		return
	}
	path := string(ctx.Path())
	switch path {
	case "/-/status":
		if !method(ctx, fasthttp.MethodGet) {
			return
		}
		h.SetContentType("text/html; charset=utf-8")
		// Only the page's own script and style may run, it may talk to its
		// own origin only, and it is never framed.
		h.Set("Content-Security-Policy", PageCSP())
		ctx.SetBody(Page())
	case "/-/api/streams":
		if !method(ctx, fasthttp.MethodGet) {
			return
		}
		name := string(ctx.QueryArgs().Peek("name"))
		writeJSON(ctx, fasthttp.StatusOK, c.Status(name))
	case "/-/api/flush", "/-/api/pause", "/-/api/resume":
		c.action(ctx, strings.TrimPrefix(path, "/-/api/"))
	default:
		writeJSONError(ctx, fasthttp.StatusNotFound, "no such console path; see /-/status")
	}
}

// authorized checks the bearer token or Basic password in constant time.
func (c *Console) authorized(ctx *fasthttp.RequestCtx) bool {
	auth := string(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization))
	var given string
	switch scheme, rest, _ := strings.Cut(auth, " "); strings.ToLower(scheme) {
	case "bearer":
		given = strings.TrimSpace(rest)
	case "basic":
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rest))
		if err != nil {
			return false
		}
		_, given, _ = strings.Cut(string(raw), ":")
	default:
		return false
	}
	d := sha256.Sum256([]byte(given))
	return subtle.ConstantTimeCompare(d[:], c.digest[:]) == 1
}

// action runs flush, pause or resume. They are POST only, and refused from
// another site: a browser holding the console's Basic credentials would
// send them with a form posted by any page it visits.
func (c *Console) action(ctx *fasthttp.RequestCtx, what string) {
	if !method(ctx, fasthttp.MethodPost) {
		return
	}
	if crossSite(ctx) {
		writeJSONError(ctx, fasthttp.StatusForbidden, "console actions are refused from another origin")
		return
	}
	name := string(ctx.QueryArgs().Peek("name"))
	switch {
	case name == "" && what != "flush":
		writeJSONError(ctx, fasthttp.StatusBadRequest, what+" needs ?name=<datasource>")
		return
	case name != "" && !buffer.ValidDatasource([]byte(name)):
		writeJSONError(ctx, fasthttp.StatusBadRequest, "invalid datasource name")
		return
	}
	changed := true
	switch what {
	case "flush":
		c.opts.Flusher.Flush(name)
	case "pause":
		changed = c.opts.Flusher.Pause(name)
	case "resume":
		changed = c.opts.Flusher.Resume(name)
	}
	c.opts.Log.Info("console action", "action", what, "datasource", name, "changed", changed)
	writeJSON(ctx, fasthttp.StatusOK, struct {
		OK         bool   `json:"ok"`
		Action     string `json:"action"`
		Datasource string `json:"datasource,omitempty"`
		Changed    bool   `json:"changed"`
	}{true, what, name, changed})
}

// crossSite reports a request a browser sent from another origin.
func crossSite(ctx *fasthttp.RequestCtx) bool {
	switch string(ctx.Request.Header.Peek("Sec-Fetch-Site")) {
	case "", "same-origin", "none":
	default:
		return true
	}
	origin := ctx.Request.Header.Peek(fasthttp.HeaderOrigin)
	if len(origin) == 0 {
		return false
	}
	u, err := url.Parse(string(origin))
	return err != nil || u.Host != string(ctx.Host())
}

func method(ctx *fasthttp.RequestCtx, m string) bool {
	if string(ctx.Method()) == m || (m == fasthttp.MethodGet && ctx.IsHead()) {
		return true
	}
	ctx.Response.Header.Set(fasthttp.HeaderAllow, m)
	writeJSONError(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed; use "+m)
	return false
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeJSONError(ctx, fasthttp.StatusInternalServerError, "cannot encode the status")
		return
	}
	ctx.SetStatusCode(status)
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetBody(b)
}

func writeJSONError(ctx *fasthttp.RequestCtx, status int, msg string) {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	ctx.SetStatusCode(status)
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetBody(b)
}

// Run samples the totals and every stream once a second until ctx ends.
func (c *Console) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	c.sample(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.sample(now)
		}
	}
}

// AdminHandler serves ADMIN_ADDR: /metrics with metrics, /-/ with c (nil:
// the console is off, 404), and 404 for anything else.
func AdminHandler(c *Console, metrics fasthttp.RequestHandler, log *slog.Logger) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		defer func() {
			if p := recover(); p != nil {
				log.Error("panic in the admin handler", "path", string(ctx.Path()), "panic", p)
				ctx.Response.Reset()
				writeJSONError(ctx, fasthttp.StatusInternalServerError, "internal error")
			}
		}()
		path := ctx.Path()
		switch {
		case string(path) == "/metrics":
			if method(ctx, fasthttp.MethodGet) {
				metrics(ctx)
			}
		case strings.HasPrefix(string(path), "/-/") && c != nil:
			c.Handler(ctx)
		default:
			writeJSONError(ctx, fasthttp.StatusNotFound, "not found: this listener serves /metrics and /-/")
		}
	}
}
