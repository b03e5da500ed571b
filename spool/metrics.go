package spool

import (
	"fmt"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	fsync       prometheus.Histogram
	replayed    prometheus.Counter
	corrupt     prometheus.Counter
	writeErrors prometheus.Counter
	spilled     prometheus.Counter
	dropped     prometheus.Counter
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
			Help: "Spool records skipped or cut off as corrupt (and segments of an unknown version), and spilled records that could not be read back.",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_spool_write_errors_total",
			Help: "Failed spool disk operations, each also logged: writing a request (refused with 503), starting a segment (requests refused until one starts), writing a done record or deleting a delivered segment (both retried), syncing or closing a sealed segment, and finding the current segment vanished or replaced.",
		}),
		spilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_spool_spilled_events_total",
			Help: "Events accepted onto disk only, while the buffer had no room or a backlog waited before them; fed to the buffer as room appears.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_spool_dropped_events_total",
			Help: "Spilled events dropped when fed to the buffer because upstream had refused their token (403) since they were accepted; each also logged.",
		}),
	}
	locked := func(f func() float64) func() float64 {
		return func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return f() }
	}
	cs := []prometheus.Collector{m.fsync, m.replayed, m.corrupt, m.writeErrors, m.spilled, m.dropped,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_bytes",
			Help: "Bytes of spool segments on disk.",
		}, locked(func() float64 { return float64(s.total) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_max_bytes",
			Help: "SPOOL_MAX_BYTES: the most bytes of segments the spool keeps on disk.",
		}, func() float64 { return float64(s.opts.MaxBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_segments",
			Help: "Spool segment files on disk, the current one included.",
		}, s.segmentCount),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_backlog_events",
			Help: "Events on disk not yet in memory: spilled, or left by an earlier run; fed to the buffer as room appears.",
		}, locked(func() float64 { return float64(s.backlogEvents) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_backlog_bytes",
			Help: "Bytes of the events on disk not yet in memory.",
		}, locked(func() float64 { return float64(s.backlogBytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_backlog_oldest_seconds",
			Help: "Age of the oldest event on disk not yet in memory, to the granularity of a segment; 0 without a backlog.",
		}, func() float64 { return s.backlogAge().Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_spool_full_in_seconds",
			Help: "Estimated seconds until the spool reaches SPOOL_MAX_BYTES at the rate it grew lately; +Inf while it is not growing.",
		}, locked(func() float64 { return s.fullInLocked(time.Now()) })),
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

// growthRate is an exponentially weighted moving average of how fast the
// spool grows, in bytes per second, over windows of a second or more.
// Spool.mu guards it.
type growthRate struct {
	perSec float64
	at     time.Time
	total  int64
}

// sample notes the spool's size now.
func (g *growthRate) sample(now time.Time, total int64) {
	if g.at.IsZero() {
		g.at, g.total = now, total
		return
	}
	el := now.Sub(g.at).Seconds()
	if el < 1 {
		return
	}
	keep := math.Pow(0.5, el/10) // a half-life of ten seconds
	g.perSec = keep*g.perSec + (1-keep)*float64(total-g.total)/el
	g.at, g.total = now, total
}

// fullInLocked estimates how many seconds until the spool reaches MaxBytes
// at the rate it grew lately; +Inf while it is not growing.
func (s *Spool) fullInLocked(now time.Time) float64 {
	s.growth.sample(now, s.total)
	if s.growth.perSec <= 0 {
		return math.Inf(1)
	}
	return float64(max(s.opts.MaxBytes-s.total, 0)) / s.growth.perSec
}

// Ready returns nil while the spool is below its high-water mark of
// MaxBytes, else why not; with the spool on, /ready follows it rather than
// the buffer, whose fill says nothing about room to accept.
func (s *Spool) Ready() error {
	s.mu.Lock()
	fill := float64(s.total) / float64(s.opts.MaxBytes)
	s.mu.Unlock()
	if fill >= s.opts.HighWatermark {
		return fmt.Errorf("spool above high-water mark (%.3f of SPOOL_MAX_BYTES)", fill)
	}
	return nil
}
