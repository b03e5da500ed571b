package queue

import (
	"strconv"
	"strings"
	"sync"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tbproxy/tbproxy/buffer"
)

// waiting is a wait=true request accepted by this process, until the
// replica that delivers it reports the outcome.
type waiting struct {
	w       *buffer.Waiter
	expires time.Time
}

// waits maps request ids to their waiters. Safe for concurrent use.
type waits struct {
	mu   sync.Mutex // protects m and next
	m    map[string]*waiting
	next uint64
}

// add registers w until expires and returns its id.
func (ws *waits) add(w *buffer.Waiter, expires time.Time) string {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.next++
	id := strconv.FormatUint(ws.next, 36)
	ws.m[id] = &waiting{w: w, expires: expires}
	return id
}

// take removes and returns the waiter for id, or nil.
func (ws *waits) take(id string) *buffer.Waiter {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	e := ws.m[id]
	if e == nil {
		return nil
	}
	delete(ws.m, id)
	return e.w
}

// expire forgets entries past their deadline: the handler answered 503
// at WAIT_TIMEOUT and nobody listens any more.
func (ws *waits) expire(now time.Time) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for id, e := range ws.m {
		if now.After(e.expires) {
			delete(ws.m, id)
		}
	}
}

// outcome is what the delivering replica reports for a wait=true request.
type outcome struct {
	ID          string `json:"id"`
	Successful  int    `json:"successful"`
	Quarantined int    `json:"quarantined"`
	Status      int    `json:"status,omitempty"` // set on failure
	Message     string `json:"message,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// onOutcome finishes the local waiter an outcome is for. Outcomes for
// requests already forgotten (timed out) or delivered twice are ignored.
func (q *Queue) onOutcome(m *nats.Msg) {
	var o outcome
	if err := json.Unmarshal(m.Data, &o); err != nil {
		q.log.Warn("ignoring a malformed wait outcome", "err", err)
		return
	}
	w := q.waits.take(o.ID)
	if w == nil {
		return
	}
	var f *buffer.Failure
	if o.Status != 0 {
		f = &buffer.Failure{Status: o.Status, Message: o.Message, Reason: o.Reason}
	}
	w.Finish(o.Successful, o.Quarantined, f)
}

// report publishes the outcome of a wait=true request to the process that
// accepted it. reply is hdrReply's value. Core NATS, at most once: if it
// is lost the client gets its WAIT_TIMEOUT 503, as with a slow upstream.
func (q *Queue) report(reply string, successful, quarantined int, f *buffer.Failure) {
	proc, id, ok := strings.Cut(reply, ".")
	if !ok || proc == "" || id == "" {
		return
	}
	o := outcome{ID: id, Successful: successful, Quarantined: quarantined}
	if f != nil {
		o.Status, o.Message, o.Reason = f.Status, f.Message, f.Reason
	}
	b, err := json.Marshal(o)
	if err != nil {
		return
	}
	if err := q.nc.Publish(q.opts.Subject+".done."+proc, b); err != nil {
		q.log.Warn("cannot report a wait=true outcome", "err", err)
	}
}

// held tracks the messages this replica fetched and has not acked or naked
// yet, with when each last told JetStream it is in progress. Safe for
// concurrent use.
type held struct {
	mu sync.Mutex // protects m
	m  map[jetstream.Msg]time.Time
}

func (h *held) add(m jetstream.Msg) {
	h.mu.Lock()
	h.m[m] = time.Now()
	h.mu.Unlock()
}

// remove reports whether m was still held: only one of the ack paths and
// Close may answer a message.
func (h *held) remove(m jetstream.Msg) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.m[m]; !ok {
		return false
	}
	delete(h.m, m)
	return true
}

// has reports whether m is still held.
func (h *held) has(m jetstream.Msg) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.m[m]
	return ok
}

func (h *held) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.m)
}

// older returns the messages last reported before t, and marks them
// reported now.
func (h *held) older(t time.Time) []jetstream.Msg {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []jetstream.Msg
	now := time.Now()
	for m, last := range h.m {
		if last.Before(t) {
			out = append(out, m)
			h.m[m] = now
		}
	}
	return out
}

func (h *held) takeAll() []jetstream.Msg {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]jetstream.Msg, 0, len(h.m))
	for m := range h.m {
		out = append(out, m)
	}
	clear(h.m)
	return out
}
