package idempotency

import "github.com/prometheus/client_golang/prometheus"

// Reasons a record read from the log at Open is not kept.
const (
	reasonExpired = "expired" // its key's window had passed
	reasonCorrupt = "corrupt" // torn, failing its checksum, or in a file of another format
)

type metrics struct {
	requests  [numOutcomes]prometheus.Counter // by Outcome, resolved once so Begin does not allocate
	evicted   prometheus.Counter
	logErrors prometheus.Counter
	expired   prometheus.Counter
	corrupt   prometheus.Counter
	all       []prometheus.Collector // what register registers
}

// newMetrics makes the store's metrics; register registers them.
func newMetrics(s *Store) *metrics {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tbproxy_idempotency_requests_total",
		Help: "Requests with an Idempotency-Key, by what the store answered: proceed (a new key), replay (seen with the same body), mismatch (seen with another body: 422), in_flight (the first request with the key has not finished), full (every remembered key is in flight: 503).",
	}, []string{"outcome"})
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tbproxy_idempotency_log_dropped_records_total",
		Help: "Records of the idempotency log not kept when it was read at startup, by reason: expired (the key's window had passed) or corrupt (torn by a crash, failing its checksum, or in a file of another format).",
	}, []string{"reason"})
	m := &metrics{
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_idempotency_evicted_total",
			Help: "Finished idempotency keys forgotten before their window ended, oldest first, to stay within the configured maximum of keys; a retry of one is stored again.",
		}),
		logErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_idempotency_log_errors_total",
			Help: "Failed operations on the idempotency log (appending or syncing a record, compacting the file), each also logged; the key stays remembered in memory, but a restart may forget it.",
		}),
		expired: dropped.WithLabelValues(reasonExpired),
		corrupt: dropped.WithLabelValues(reasonCorrupt),
	}
	for o := range numOutcomes {
		m.requests[o] = requests.WithLabelValues(o.String())
	}
	m.all = []prometheus.Collector{requests, dropped, m.evicted, m.logErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_idempotency_keys",
			Help: "Idempotency keys remembered, in flight and finished, up to the configured maximum.",
		}, s.keys),
	}
	return m
}

// register registers the metrics on reg, unless reg is nil; on error it
// unregisters those it had registered.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for i, c := range m.all {
		if err := reg.Register(c); err != nil {
			for _, c := range m.all[:i] {
				reg.Unregister(c)
			}
			return err
		}
	}
	return nil
}
