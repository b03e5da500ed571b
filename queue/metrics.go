package queue

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Publish results, the values of tbproxy_queue_publishes_total{result}.
const (
	resultOK        = "ok"        // JetStream stored the request: 202
	resultFull      = "full"      // the stream is at its limits: 429
	resultError     = "error"     // NATS unreachable, timeout, no stream: 503
	resultTooLarge  = "too_large" // above the server's max_payload: 413
	resultDuplicate = "duplicate" // an Idempotency-Key the stream already held (PutIdempotent)
)

// Dead-letter reasons, the values of
// tbproxy_queue_dead_lettered_events_total{reason}: messages the bridge
// terminated instead of putting in the buffer.
const (
	reasonMaxDeliver = "max_deliver" // delivered QUEUE_MAX_DELIVER times without an ack
	reasonMalformed  = "malformed"   // no datasource header: not written by tbproxy
	reasonTooLarge   = "too_large"   // larger than this replica's whole buffer
	reasonDenied     = "token_denied"
)

type metrics struct {
	publishes       *prometheus.CounterVec
	published       prometheus.Counter // publishes{result="ok"}, counted per request
	duplicates      prometheus.Counter // publishes{result="duplicate"}: an Idempotency-Key's repeat
	publishDuration prometheus.Histogram
	fetched         prometheus.Counter
	acked           prometheus.Counter
	naked           prometheus.Counter
	redelivered     prometheus.Counter
	deadLettered    *prometheus.CounterVec
	connected       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, held func() float64) (*metrics, error) {
	m := &metrics{
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_queue_publishes_total",
			Help: "Accepted requests published to the JetStream stream, by result (ok, full, error, too_large, duplicate: a repeated Idempotency-Key the stream already held).",
		}, []string{"result"}),
		publishDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tbproxy_queue_publish_duration_seconds",
			Help:    "Time from publishing a request to JetStream's acknowledgement (or failure).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}),
		fetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_queue_fetched_messages_total",
			Help: "Messages this replica fetched from the shared consumer.",
		}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_queue_acked_messages_total",
			Help: "Messages acknowledged to JetStream: delivered upstream or dropped with a reason.",
		}),
		naked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_queue_naked_messages_total",
			Help: "Messages handed back for another replica (shutdown, buffer closed).",
		}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_queue_redelivered_messages_total",
			Help: "Fetched messages that had been delivered before (a replica died, ack wait expired, or a nak).",
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_queue_dead_lettered_events_total",
			Help: "Events terminated in the stream instead of delivered, by reason.",
		}, []string{"reason"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tbproxy_queue_connected",
			Help: "1 while connected to NATS, 0 otherwise.",
		}),
	}
	for _, r := range []string{resultOK, resultFull, resultError, resultTooLarge, resultDuplicate} {
		m.publishes.WithLabelValues(r)
	}
	m.published = m.publishes.WithLabelValues(resultOK)
	m.duplicates = m.publishes.WithLabelValues(resultDuplicate)
	for _, r := range []string{reasonMaxDeliver, reasonMalformed, reasonTooLarge, reasonDenied} {
		m.deadLettered.WithLabelValues(r)
	}
	heldGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tbproxy_queue_held_messages",
		Help: "Messages fetched by this replica and not yet acked or naked.",
	}, held)
	for _, c := range []prometheus.Collector{m.publishes, m.publishDuration, m.fetched, m.acked, m.naked,
		m.redelivered, m.deadLettered, m.connected, heldGauge} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
