package flusher

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
)

// Drop reasons, the values of tbproxy_dropped_events_total{reason}. Every
// event the proxy acknowledged and then did not deliver is counted under one.
const (
	// reasonUpstreamRejected: upstream refused the batch with a final 4xx.
	reasonUpstreamRejected = "upstream_rejected"
	// reasonUpstreamPartial: upstream answered 422, a partial write that is
	// never retried because a retry would duplicate the rows it did write.
	reasonUpstreamPartial = "upstream_partial_write"
	// reasonRowTooLarge: upstream answered 413 to a batch of one row, so
	// splitting cannot help.
	reasonRowTooLarge = "row_too_large"
	// reasonUpstreamShortAck: upstream answered 2xx but counted fewer
	// successful plus quarantined rows than the batch held.
	reasonUpstreamShortAck = "upstream_short_ack"
	// reasonShutdownTimeout: still undelivered when the drain deadline passed.
	reasonShutdownTimeout = "shutdown_timeout"
)

var dropReasons = []string{reasonUpstreamRejected, reasonUpstreamPartial, reasonRowTooLarge, reasonUpstreamShortAck, reasonShutdownTimeout}

type metrics struct {
	upstreamRequests *prometheus.CounterVec
	upstreamDuration prometheus.Histogram
	retries          prometheus.Counter
	delivered        prometheus.Counter
	quarantined      prometheus.Counter
	dropped          *prometheus.CounterVec
	batchEvents      prometheus.Histogram
	batchBytes       prometheus.Histogram
	inflight         prometheus.Gauge
	splits           prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, buf *buffer.Buffer, oldest func() time.Duration) (*metrics, error) {
	m := &metrics{
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_upstream_requests_total",
			Help: "Requests sent upstream, by HTTP status code (\"error\" when no answer came, \"ok\" for the file sink).",
		}, []string{"code"}),
		upstreamDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tbproxy_upstream_request_duration_seconds",
			Help:    "Time from sending a batch upstream to its answer, compression included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_upstream_retries_total",
			Help: "Failed upstream attempts that were retried.",
		}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_delivered_events_total",
			Help: "Events upstream acknowledged as written (successful_rows).",
		}),
		quarantined: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_quarantined_events_total",
			Help: "Events upstream accepted into the datasource's quarantine (quarantined_rows).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_dropped_events_total",
			Help: "Acknowledged events that were not delivered, by reason.",
		}, []string{"reason"}),
		batchEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tbproxy_batch_events",
			Help:    "Events per batch sent upstream.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
		batchBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tbproxy_batch_bytes",
			Help:    "Uncompressed NDJSON bytes per batch sent upstream.",
			Buckets: prometheus.ExponentialBuckets(256, 4, 10),
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tbproxy_upstream_inflight_batches",
			Help: "Batches being sent or waiting to retry.",
		}),
		splits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_upstream_splits_total",
			Help: "Batches split in halves because upstream answered 413.",
		}),
	}
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(r)
	}
	// Present from the start, so dashboards and rate() see zeros, not gaps.
	for _, code := range []string{"200", "202", "400", "403", "404", "413", "422", "429", "500", "503", "error"} {
		m.upstreamRequests.WithLabelValues(code)
	}
	cs := []prometheus.Collector{
		m.upstreamRequests, m.upstreamDuration, m.retries, m.delivered, m.quarantined,
		m.dropped, m.batchEvents, m.batchBytes, m.inflight, m.splits,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_buffer_events",
			Help: "Events held: accepted and not yet delivered or dropped.",
		}, func() float64 { return float64(buf.Stats().Events) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_buffer_bytes",
			Help: "NDJSON bytes held: accepted and not yet delivered or dropped.",
		}, func() float64 { return float64(buf.Stats().Bytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_buffer_max_events",
			Help: "Limit on held events (BUFFER_SIZE).",
		}, func() float64 { return float64(buf.Stats().MaxEvents) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_buffer_max_bytes",
			Help: "Limit on held bytes (BUFFER_MAX_BYTES).",
		}, func() float64 { return float64(buf.Stats().MaxBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_buffer_oldest_event_age_seconds",
			Help: "Age of the oldest held event; grows while upstream is failing.",
		}, func() float64 { return oldest().Seconds() }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// observeAttempt counts one upstream attempt under its HTTP status, "ok"
// for a non-HTTP success, or "error" when no answer came.
func (m *metrics) observeAttempt(status int, ok bool, took time.Duration) {
	code := "error"
	switch {
	case status > 0:
		code = strconv.Itoa(status)
	case ok:
		code = "ok"
	}
	m.upstreamRequests.WithLabelValues(code).Inc()
	m.upstreamDuration.Observe(took.Seconds())
}
