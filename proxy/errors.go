package proxy

import (
	"strconv"

	json "github.com/goccy/go-json"
	"github.com/valyala/fasthttp"
)

// Refusal reasons, the values of tbproxy_requests_refused_total{reason}.
const (
	reasonBadRequest   = "bad_request"            // no or invalid name, unsupported encoding
	reasonUnauthorized = "unauthorized"           // no or unknown token
	reasonInvalidBody  = "invalid_json"           // a line that is not a JSON object
	reasonTooLarge     = "too_large"              // body or request larger than allowed
	reasonBufferFull   = "buffer_full"            // 429: the buffer has no room now
	reasonShuttingDown = "shutting_down"          // 503: the buffer is closed
	reasonStorage      = "storage_error"          // 503: the spool could not write
	reasonOverloaded   = "overloaded"             // 503: REQUEST_MEMORY_BYTES is spent on other requests
	reasonReadTimeout  = "read_timeout"           // 408: the body did not arrive within READ_TIMEOUT
	reasonMaxConns     = "max_connections"        // 503: a connection over MAX_CONNECTIONS
	reasonTooManyKeys  = "too_many_keys"          // 429: MAX_DATASOURCES or MAX_UNVERIFIED_TOKENS
	reasonNotAllowed   = "datasource_not_allowed" // 403: outside a named client's allow-list
	reasonRateLimited  = "rate_limited"           // 429: a client's events_per_minute or events_per_day
	reasonStreamShare  = "stream_share"           // 429: one stream holds its BUFFER_STREAM_SHARE while others send
	reasonIdempotency  = "idempotency_conflict"   // 422, 409: an Idempotency-Key reused with another body, or still in flight
)

var refusalReasons = []string{reasonBadRequest, reasonUnauthorized, reasonInvalidBody, reasonTooLarge, reasonBufferFull, reasonShuttingDown, reasonStorage, reasonOverloaded, reasonReadTimeout, reasonMaxConns, reasonTooManyKeys,
	reasonNotAllowed, reasonRateLimited, reasonStreamShare, reasonIdempotency}

// errorBody renders Tinybird's error shape, {"error":"<message>"}. Every
// error the proxy sends is JSON: clients such as zod-bird call res.json() on
// error responses and would throw a SyntaxError on plain text.
func errorBody(msg string) []byte {
	b, err := json.MarshalWithOption(struct {
		Error string `json:"error"`
	}{msg}, json.DisableHTMLEscape())
	if err != nil { // a string always marshals; keep the contract regardless
		return []byte(`{"error":"internal error"}`)
	}
	return b
}

// writeError answers with status and a JSON error body.
func writeError(ctx *fasthttp.RequestCtx, status int, body []byte) {
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(body)
}

// Fixed error bodies, rendered once.
var (
	bodyMissingName         = errorBody("missing the 'name' parameter: POST /v0/events?name=<datasource>")
	bodyBadName             = errorBody("invalid 'name' parameter: a datasource name has letters, digits and underscores, does not start with a digit, and is at most 255 characters")
	bodyNoToken             = errorBody("missing token: send 'Authorization: Bearer <token>' or ?token=<token>")
	bodyBadToken            = errorBody("invalid token")
	bodyBufferFull          = errorBody("the proxy's buffer is full; retry after the time in Retry-After")
	bodyShuttingDown        = errorBody("the proxy is shutting down; retry against another instance")
	bodyNotFound            = errorBody("not found")
	bodyNotAllowed          = errorBody("method not allowed")
	bodyBadTarget           = errorBody("the request target must be a path starting with '/'")
	bodyUnsupportedCE       = errorBody("unsupported Content-Encoding: use gzip, zstd or none")
	bodyBadCompressed       = errorBody("the request body could not be decompressed")
	bodyOriginDenied        = errorBody("origin not allowed: see CORS_ALLOWED_ORIGINS")
	bodyUpstreamDown        = errorBody("upstream unreachable: the request was not forwarded to Tinybird")
	bodyUpstreamTimeout     = errorBody("upstream did not answer in time")
	bodyReadOnlyPassthrough = errorBody("this proxy accepts anyone (ALLOW_UNAUTHENTICATED), so it forwards only GET and HEAD requests to the rest of the API")
	bodyTooManyNames        = errorBody("too many distinct datasources held at once (MAX_DATASOURCES); retry after the time in Retry-After")
	bodyTooManyTokens       = errorBody("too many distinct tokens upstream has not accepted yet held at once (MAX_UNVERIFIED_TOKENS); retry after the time in Retry-After")
	bodyStorage             = errorBody("the proxy could not write the events to its spool (disk full or unwritable); nothing was stored, retry later")
	bodyDeniedToken         = errorBody("invalid token: upstream refused it recently")
	bodyWaitTimeout         = errorBody("timed out waiting for upstream to acknowledge the rows; they are still queued and will be delivered, so retrying this request may create duplicates")
	bodyOverloaded          = errorBody("the proxy is holding too many request bodies in memory at once (REQUEST_MEMORY_BYTES); retry after the time in Retry-After")
	bodyReadTimeout         = errorBody("the request did not arrive in time (READ_TIMEOUT); nothing was stored")
	bodyMalformed           = errorBody("malformed HTTP request")
	bodyHeadersTooLarge     = errorBody("request headers too large (MAX_HEADER_BYTES)")
	bodyUnreadable          = errorBody("the request body could not be read (malformed chunked encoding or a connection error); nothing was stored")
	bodyTooManyEvents       = errorBody("request holds more events or bytes than the proxy's whole buffer; split it into smaller requests")
	bodyTooManyLimited      = errorBody("too many distinct tokens are being rate limited at once (RATE_LIMIT_MAX_KEYS); retry after the time in Retry-After")
	bodyStreamShare         = errorBody("this client's events for this datasource fill their share of the proxy's buffer (BUFFER_STREAM_SHARE) while other clients are sending; retry after the time in Retry-After")
	bodyBadIdempotencyKey   = errorBody("invalid Idempotency-Key: 1 to 256 printable ASCII characters")
	bodyIdempotencyMismatch = errorBody("this Idempotency-Key was used with a different body within IDEMPOTENCY_WINDOW; use a new key for new events")
	bodyIdempotencyInFlight = errorBody("a request with this Idempotency-Key is still in flight; retry after the time in Retry-After")
	bodyIdempotencyFull     = errorBody("too many Idempotency-Key requests in flight at once (IDEMPOTENCY_MAX_KEYS); retry after the time in Retry-After")
)

func bodyTooLarge(limit int) []byte {
	return errorBody("request body larger than " + strconv.Itoa(limit) + " bytes (after decompression); split it into smaller requests")
}

// successBody renders {"successful_rows":N,"quarantined_rows":Q} into dst.
func successBody(dst []byte, successful, quarantined int) []byte {
	dst = append(dst, `{"successful_rows":`...)
	dst = strconv.AppendInt(dst, int64(successful), 10)
	dst = append(dst, `,"quarantined_rows":`...)
	dst = strconv.AppendInt(dst, int64(quarantined), 10)
	return append(dst, '}')
}
