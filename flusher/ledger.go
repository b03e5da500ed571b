package flusher

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/upstream"
)

// StreamStats is what the flusher knows of one stream (a datasource, and a
// client token in pass-through mode) for an operator: held, delivered,
// what went wrong. It carries no token and no event contents.
type StreamStats struct {
	Datasource string
	// Client is the named client (CLIENTS_FILE) the stream's events came
	// from; "" for unnamed clients and events replayed from disk or queue.
	Client string
	// TokenID is the first 8 hex digits of the SHA-256 of the stream's
	// client token (pass-through mode); "" for the proxy's own token.
	TokenID                   string
	HeldEvents, HeldBytes     int64
	Oldest                    time.Time // Accepted time of its oldest held event; zero if none
	Accepted, Delivered       int64     // since the stream appeared
	Quarantined, DeadLettered int64
	Dropped                   int64
	InFlight                  int
	LastStatus                int    // upstream's last HTTP status; 0 for none yet or no answer
	LastError                 string // upstream's last error text, for clients; "" after a success
	LastDelivery              time.Time
	Paused                    bool
}

// ledger keeps a StreamStats per stream while it holds events, and for
// ledgerRetention after its last activity, so counts outlive the batches.
// It is bounded: beyond maxEntries streams, new ones are summed in one
// entry for the datasource "(other)". Safe for concurrent use: the loop and
// the senders write it, the console reads it.
type ledger struct {
	mu      sync.Mutex
	entries map[buffer.Key]*ledgerEntry
	max     int
	// labels are the datasource label values the per-datasource metrics
	// use, bounded by max; others are counted under otherLabel.
	labels map[string]bool
	m      *dsMetrics
	paused atomic.Pointer[map[string]bool] // copy on write: read on every wake
}

type ledgerEntry struct {
	StreamStats
	active time.Time // last accept, release or answer
}

const (
	ledgerRetention = 15 * time.Minute
	otherStreams    = "(other)"
	otherLabel      = "_other"
)

func newLedger(maxEntries int, m *dsMetrics) *ledger {
	if maxEntries <= 0 {
		maxEntries = 1000
	}
	l := &ledger{entries: make(map[buffer.Key]*ledgerEntry), max: maxEntries, labels: make(map[string]bool), m: m}
	l.paused.Store(&map[string]bool{})
	return l
}

// entryLocked returns key's entry, creating it (or, past max, the overflow
// entry) and forgetting entries idle for ledgerRetention.
func (l *ledger) entryLocked(key buffer.Key, now time.Time) *ledgerEntry {
	e := l.entries[key]
	if e == nil {
		if len(l.entries) >= l.max {
			l.expireLocked(now)
		}
		if len(l.entries) >= l.max {
			key = buffer.Key{Datasource: otherStreams}
			if e = l.entries[key]; e != nil {
				e.active = now
				return e
			}
		}
		e = &ledgerEntry{StreamStats: StreamStats{Datasource: key.Datasource, Client: key.Client, TokenID: tokenID(key.Token)}}
		l.entries[key] = e
		if key.Datasource != otherStreams {
			l.labelLocked(key.Datasource) // its series exist from its first event, not its first answer
		}
	}
	e.active = now
	return e
}

// expireLocked forgets streams that hold nothing and were idle for
// ledgerRetention.
func (l *ledger) expireLocked(now time.Time) {
	for k, e := range l.entries {
		if e.HeldEvents <= 0 && e.InFlight <= 0 && now.Sub(e.active) > ledgerRetention {
			delete(l.entries, k)
		}
	}
}

// tokenID names a client token without revealing it.
func tokenID(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:4])
}

// label is the datasource label value for ds: ds itself for the first max
// datasources seen, otherLabel beyond. l.mu is held.
func (l *ledger) labelLocked(ds string) string {
	if l.labels[ds] {
		return ds
	}
	if len(l.labels) < l.max {
		l.labels[ds] = true
		l.m.create(ds)
		return ds
	}
	l.m.create(otherLabel)
	return otherLabel
}

// taken counts entries the loop took from the buffer.
func (l *ledger) taken(es []buffer.Entry, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, be := range es {
		e := l.entryLocked(be.Key, now)
		if e.HeldEvents == 0 { // the loop's refresh may not come before it idles
			e.Oldest = time.Unix(0, be.Accepted)
		}
		e.Accepted += int64(be.Rows)
		e.HeldEvents += int64(be.Rows)
		e.HeldBytes += int64(len(be.Data))
	}
}

// started counts a batch of key going out.
func (l *ledger) started(key buffer.Key, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entryLocked(key, now).InFlight++
}

// finished counts a batch of key back, its rows (stored in data) given
// back to the buffer: delivered, dropped, or abandoned.
func (l *ledger) finished(key buffer.Key, rows int, data [][]byte, now time.Time) {
	n := 0
	for _, d := range data {
		n += len(d)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entryLocked(key, now)
	e.InFlight = max(e.InFlight-1, 0)
	e.HeldEvents = max(e.HeldEvents-int64(rows), 0)
	e.HeldBytes = max(e.HeldBytes-int64(n), 0)
	if e.HeldEvents == 0 {
		e.Oldest = time.Time{} // the loop refreshes it only while it runs
	}
}

// delivered records a batch upstream acknowledged.
func (l *ledger) delivered(key buffer.Key, res upstream.Result, short int, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entryLocked(key, now)
	e.Delivered += int64(res.SuccessfulRows)
	e.Quarantined += int64(res.QuarantinedRows)
	e.Dropped += int64(short)
	e.LastStatus, e.LastError, e.LastDelivery = res.Status, "", now
	ds := l.labelLocked(key.Datasource)
	l.m.delivered.WithLabelValues(ds).Add(float64(res.SuccessfulRows))
	l.m.quarantined.WithLabelValues(ds).Add(float64(res.QuarantinedRows))
	if short > 0 {
		l.m.dropped.WithLabelValues(ds, reasonUpstreamShortAck).Add(float64(short))
	}
}

// dropped records rows dropped for reason, dead-lettered or not.
func (l *ledger) dropped(key buffer.Key, rows int, f *buffer.Failure, deadLettered bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entryLocked(key, now)
	e.Dropped += int64(rows)
	e.LastStatus, e.LastError = f.Status, upstream.ErrorText(f.Message)
	ds := l.labelLocked(key.Datasource)
	l.m.dropped.WithLabelValues(ds, f.Reason).Add(float64(rows))
	if deadLettered {
		e.DeadLettered += int64(rows)
		l.m.deadLettered.WithLabelValues(ds).Add(float64(rows))
	}
}

// failed records an attempt that will be retried. Its error text may quote
// rows (ClickHouse), so the console is told only what a client would be.
func (l *ledger) failed(key buffer.Key, re *upstream.RetryableError, now time.Time) {
	text := re.Public
	switch {
	case text != "":
	case re.Status > 0:
		text = "upstream answered " + strconv.Itoa(re.Status) + " " + http.StatusText(re.Status) + "; retrying"
	default:
		text = "no answer from upstream (unreachable or timed out); retrying"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entryLocked(key, now)
	e.LastStatus, e.LastError = re.Status, text
}

// setOldest records each held stream's oldest event (Unix nanoseconds),
// and zero for every other; the per-datasource age gauge follows.
func (l *ledger) setOldest(oldest map[buffer.Key]int64, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	byDS := map[string]int64{}
	for k, e := range l.entries {
		t := oldest[k]
		e.Oldest = time.Time{}
		if t != 0 {
			e.Oldest = time.Unix(0, t)
			if o := byDS[k.Datasource]; o == 0 || t < o {
				byDS[k.Datasource] = t
			}
		}
	}
	for ds := range l.labels {
		age := 0.0
		if t := byDS[ds]; t != 0 {
			age = now.Sub(time.Unix(0, t)).Seconds()
		}
		l.m.oldest.WithLabelValues(ds).Set(age)
	}
}

// snapshot returns every stream's stats, by datasource then token id; a
// paused datasource with no stream yet is listed too, so an operator sees
// the pause on every replica.
func (l *ledger) snapshot() []StreamStats {
	paused := *l.paused.Load()
	l.mu.Lock()
	out := make([]StreamStats, 0, len(l.entries)+len(paused))
	listed := make(map[string]bool, len(paused))
	for _, e := range l.entries {
		s := e.StreamStats
		s.Paused = paused[s.Datasource]
		listed[s.Datasource] = true
		out = append(out, s)
	}
	l.mu.Unlock()
	for ds := range paused {
		if !listed[ds] {
			out = append(out, StreamStats{Datasource: ds, Paused: true})
		}
	}
	slices.SortFunc(out, func(a, b StreamStats) int {
		if c := strings.Compare(a.Datasource, b.Datasource); c != 0 {
			return c
		}
		if c := strings.Compare(a.Client, b.Client); c != 0 {
			return c
		}
		return strings.Compare(a.TokenID, b.TokenID)
	})
	return out
}

// isPaused reports whether delivery of ds is on hold.
func (l *ledger) isPaused(ds string) bool {
	p := *l.paused.Load()
	return len(p) > 0 && p[ds]
}

// setPaused puts delivery of ds on hold, or lifts it; it reports whether
// that changed anything.
func (l *ledger) setPaused(ds string, on bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := *l.paused.Load()
	if old[ds] == on {
		return false
	}
	next := make(map[string]bool, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	if on {
		next[ds] = true
	} else {
		delete(next, ds)
	}
	l.paused.Store(&next)
	return true
}

// dsMetrics are the per-datasource series, their label bounded by
// MAX_DATASOURCES (see ledger.labelLocked).
type dsMetrics struct {
	delivered, quarantined, deadLettered *prometheus.CounterVec
	dropped                              *prometheus.CounterVec
	oldest                               *prometheus.GaugeVec
}

func newDSMetrics() *dsMetrics {
	return &dsMetrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_datasource_delivered_events_total",
			Help: "Events upstream acknowledged as written, by datasource (at most MAX_DATASOURCES names; the rest as _other).",
		}, []string{"datasource"}),
		quarantined: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_datasource_quarantined_events_total",
			Help: "Events upstream put in the datasource's quarantine, by datasource.",
		}, []string{"datasource"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_datasource_dead_lettered_events_total",
			Help: "Dropped events written to DEAD_LETTER_DIR, by datasource.",
		}, []string{"datasource"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tbproxy_datasource_dropped_events_total",
			Help: "Acknowledged events not delivered, by datasource and reason.",
		}, []string{"datasource", "reason"}),
		oldest: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tbproxy_datasource_oldest_event_age_seconds",
			Help: "Age of the oldest event held in memory, by datasource; 0 when none is held.",
		}, []string{"datasource"}),
	}
}

// create makes every series of ds exist at 0, so dashboards and rate()
// see a datasource's first drop rise from zero rather than appear at one.
func (m *dsMetrics) create(ds string) {
	m.delivered.WithLabelValues(ds)
	m.quarantined.WithLabelValues(ds)
	m.deadLettered.WithLabelValues(ds)
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(ds, r)
	}
	m.oldest.WithLabelValues(ds)
}

func (m *dsMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.delivered, m.quarantined, m.deadLettered, m.dropped, m.oldest}
}
