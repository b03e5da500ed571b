package proxy

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/idempotency"
	"github.com/valyala/fasthttp"
)

// Idempotency remembers the requests that carried an Idempotency-Key
// (*idempotency.Store).
type Idempotency interface {
	Begin(scope, datasource string, key []byte, sum [32]byte) (idempotency.Outcome, *idempotency.Pending, idempotency.Answer)
}

// IdempotentStore is a Store that also deduplicates by an id of its own:
// the JetStream queue, whose Nats-Msg-Id duplicate window spans replicas.
// duplicate means an earlier request with the same id stored the rows and
// nothing was stored now.
type IdempotentStore interface {
	PutIdempotent(key buffer.Key, lines [][]byte, w *buffer.Waiter, id string) (duplicate bool, err error)
}

const headerIdempotencyKey = "Idempotency-Key"

// keyed is one request's Idempotency-Key state, on the handler's stack.
// Its zero value is a request without a key: every method is a no-op.
type keyed struct {
	p  *idempotency.Pending
	id string // the store's id for it (Nats-Msg-Id): scope, datasource, key and body
}

// stored records that the request's rows are stored, before it is
// answered: a retry after a restart (with SPOOL_DIR) is then a replay.
func (k *keyed) stored(s *Server, ctx *fasthttp.RequestCtx, n int) {
	if k.p == nil {
		return
	}
	if err := k.p.Stored(idempotency.Answer{Status: fasthttp.StatusAccepted, Successful: n}); err != nil {
		s.log.Warn("idempotency key not written down; a retry after a restart may store these rows again",
			"request_id", requestID(ctx), "err", err)
	}
}

// done ends the request with the answer its client got.
func (k *keyed) done(a idempotency.Answer) {
	if k.p != nil {
		k.p.Done(a)
		k.p = nil
	}
}

// forget ends a request that stored nothing: a retry stores its rows. It
// is deferred by the handler, so a request refused anywhere ends here.
func (k *keyed) forget() {
	if k.p != nil {
		k.p.Forget()
		k.p = nil
	}
}

// beginKeyed looks up the request's Idempotency-Key, if it has one and
// IDEMPOTENCY_WINDOW is on. A first request proceeds (the zero keyed
// without a key); a repeat is answered here with the first answer (and
// Idempotent-Replayed: true), a repeat with another body with 422, a
// repeat while the first is in flight waits up to WAIT_TIMEOUT for it, then
// gets 409. false means the request was answered.
func (s *Server) beginKeyed(ctx *fasthttp.RequestCtx, who caller, key buffer.Key, lines [][]byte) (keyed, bool) {
	if s.opts.Idempotency == nil {
		return keyed{}, true
	}
	k := ctx.Request.Header.Peek(headerIdempotencyKey)
	if len(k) == 0 {
		return keyed{}, true
	}
	if !idempotency.ValidKey(k) {
		s.refuseClient(ctx, who, fasthttp.StatusBadRequest, reasonBadRequest, bodyBadIdempotencyKey, 0)
		return keyed{}, false
	}
	sum := fingerprint(lines)
	scope := who.scope()
	// A first request that stored nothing wakes its repeats to try again;
	// three rounds of that is a client racing itself: 409.
	for range 3 {
		out, p, a := s.opts.Idempotency.Begin(scope, key.Datasource, k, sum)
		switch out {
		case idempotency.Proceed:
			kd := keyed{p: p}
			if _, ok := s.store.(IdempotentStore); ok { // only the queue needs an id of its own
				kd.id = storeID(scope, key.Datasource, k, sum)
			}
			return kd, true
		case idempotency.Replay:
			s.replay(ctx, a)
			return keyed{}, false
		case idempotency.Mismatch:
			s.refuseClient(ctx, who, fasthttp.StatusUnprocessableEntity, reasonIdempotency, bodyIdempotencyMismatch, len(lines))
			return keyed{}, false
		case idempotency.Full:
			ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
			s.refuseClient(ctx, who, fasthttp.StatusServiceUnavailable, reasonIdempotency, bodyIdempotencyFull, len(lines))
			return keyed{}, false
		case idempotency.InFlight:
			a, ok, timedOut := p.Wait(s.opts.WaitTimeout)
			if ok {
				s.replay(ctx, a)
				return keyed{}, false
			}
			if !timedOut {
				continue // the first request stored nothing: this one may
			}
		}
		break // still in flight after WAIT_TIMEOUT
	}
	ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
	s.refuseClient(ctx, who, fasthttp.StatusConflict, reasonIdempotency, bodyIdempotencyInFlight, len(lines))
	return keyed{}, false
}

// replay answers a repeated request with its first request's answer.
func (s *Server) replay(ctx *fasthttp.RequestCtx, a idempotency.Answer) {
	s.m.replayed.Inc()
	ctx.Response.Header.Set("Idempotent-Replayed", "true")
	if a.Error != "" {
		writeError(ctx, a.Status, errorBody(a.Error))
		return
	}
	writeSuccess(ctx, a.Status, a.Successful, a.Quarantined)
}

// fingerprint is the SHA-256 of the request's events as stored, one line
// each: the same events sent gzip'd or not, with or without a final
// newline or blank lines, are the same body.
func fingerprint(lines [][]byte) [32]byte {
	h := sha256.New()
	for _, l := range lines {
		h.Write(l)
		h.Write(newline)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

var newline = []byte{'\n'}

// storeID is the id a deduplicating store (the queue) keeps for a keyed
// request: the client, datasource, key and body, hashed, so a repeat with
// another body is never taken for the first.
func storeID(scope, datasource string, key []byte, sum [32]byte) string {
	h := sha256.New()
	h.Write([]byte(scope))
	h.Write([]byte{0})
	h.Write([]byte(datasource))
	h.Write([]byte{0})
	h.Write(key)
	h.Write([]byte{0})
	h.Write(sum[:])
	var id [32]byte
	return hex.EncodeToString(h.Sum(id[:0])[:16])
}
