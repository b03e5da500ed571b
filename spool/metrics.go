package spool

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	fsync       prometheus.Histogram
	replayed    prometheus.Counter
	corrupt     prometheus.Counter
	writeErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Spool) (*metrics, error) {
	m := &metrics{
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tbproxy_spool_fsync_duration_seconds",
			Help:    "Time each fsync of a spool segment took.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_spool_replayed_events_total",
			Help: "Events replayed from spool segments left by an earlier run.",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_spool_corrupt_records_total",
			Help: "Spool records skipped or cut off as corrupt (and segments of an unknown version).",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_spool_write_errors_total",
			Help: "Failed spool disk operations, each also logged: writing a request (refused with 503), starting a segment (requests refused until one starts), writing a done record or deleting a delivered segment (both retried), syncing or closing a sealed segment, and finding the current segment vanished or replaced.",
		}),
	}
	cs := []prometheus.Collector{m.fsync, m.replayed, m.corrupt, m.writeErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_bytes",
			Help: "Bytes of spool segments on disk.",
		}, func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(s.total) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_segments",
			Help: "Spool segment files on disk, the current one included.",
		}, s.segmentCount),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// segmentCount counts segment files: live ones, and those left by an
// earlier run that Replay has not reached yet (a segment being replayed is
// in both lists and counted once).
func (s *Spool) segmentCount() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.live)
	for _, o := range s.old {
		if _, ok := s.live[o.seq]; !ok {
			n++
		}
	}
	return float64(n)
}
