package proxy

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	handlerEvents      = "events"
	handlerPassthrough = "passthrough" // the rest of Tinybird's API, forwarded
	handlerOther       = "other"       // health, readiness, metrics, unknown paths
)

type metrics struct {
	requests       *prometheus.CounterVec
	accepted       prometheus.Counter
	refusedReqs    *prometheus.CounterVec
	refusedEvents  *prometheus.CounterVec
	eventsByStatus map[int]prometheus.Counter // pre-resolved hot-path children
	waitTimeouts   prometheus.Counter
	requestMemory  prometheus.GaugeFunc
	replayed       prometheus.Counter
	// By named client (CLIENTS_FILE bounds the names).
	clientEvents   *prometheus.CounterVec
	clientRefusals *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, budget *memBudget) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_http_requests_total",
			Help: "HTTP requests answered, by handler (events, passthrough or other) and status code.",
		}, []string{"handler", "code"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_events_accepted_total",
			Help: "Events acknowledged to clients (202) and stored in the buffer.",
		}),
		refusedReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_requests_refused_total",
			Help: "Events API requests refused, and requests that could not be read at all, by reason; nothing from them was stored.",
		}, []string{"reason"}),
		refusedEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_events_refused_total",
			Help: "Valid events refused with their request, by reason (buffer_full, too_large, shutting_down, storage_error).",
		}, []string{"reason"}),
		eventsByStatus: make(map[int]prometheus.Counter),
		requestMemory: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_request_memory_bytes",
			Help: "Memory held by requests whose bodies are being read, decoded and split, against REQUEST_MEMORY_BYTES.",
		}, func() float64 { return float64(budget.used.Load()) }),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_idempotent_replays_total",
			Help: "Requests answered with an earlier request's answer because they repeated its Idempotency-Key; nothing was stored for them.",
		}),
		clientEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_client_events_accepted_total",
			Help: "Events accepted from each named client (CLIENTS_FILE).",
		}, []string{"client"}),
		clientRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_client_requests_refused_total",
			Help: "Requests refused from each named client (CLIENTS_FILE), by reason (as tbproxy_requests_refused_total).",
		}, []string{"client", "reason"}),
		waitTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_wait_timeouts_total",
			Help: "wait=true requests answered 503 because upstream had not acknowledged their rows within WAIT_TIMEOUT.",
		}),
	}
	for _, r := range refusalReasons {
		m.refusedReqs.WithLabelValues(r)
	}
	for _, r := range []string{reasonBufferFull, reasonTooLarge, reasonShuttingDown, reasonStorage, reasonRateLimited, reasonStreamShare} {
		m.refusedEvents.WithLabelValues(r)
	}
	for _, code := range []int{200, 202, 400, 403, 405, 409, 413, 415, 422, 429, 503} {
		m.eventsByStatus[code] = m.requests.WithLabelValues(handlerEvents, strconv.Itoa(code))
	}
	for _, c := range []prometheus.Collector{m.requests, m.accepted, m.refusedReqs, m.refusedEvents, m.waitTimeouts, m.requestMemory, m.replayed, m.clientEvents, m.clientRefusals} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) request(handler string, code int) {
	if handler == handlerEvents {
		if c, ok := m.eventsByStatus[code]; ok {
			c.Inc()
			return
		}
	}
	m.requests.WithLabelValues(handler, strconv.Itoa(code)).Inc()
}

func (m *metrics) refused(reason string, events int) {
	m.refusedReqs.WithLabelValues(reason).Inc()
	if events > 0 {
		m.refusedEvents.WithLabelValues(reason).Add(float64(events))
	}
}

// clientAccepted counts n events accepted from the named client name ("":
// unnamed, not counted by client).
func (m *metrics) clientAccepted(name string, n int) {
	if name != "" {
		m.clientEvents.WithLabelValues(name).Add(float64(n))
	}
}

// clientRefused counts a request refused from the named client name.
func (m *metrics) clientRefused(name, reason string) {
	m.clientRefusals.WithLabelValues(name, reason).Inc()
}
