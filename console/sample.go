package console

import (
	"time"

	dto "github.com/prometheus/client_model/go"
)

// ring holds the last SampleSeconds values of one series, one a second.
// Its size is fixed: the console's memory is bounded per stream, whatever
// the uptime.
type ring struct {
	v    [SampleSeconds]float32
	n    int // values held
	next int // where the next one goes
}

func (r *ring) push(x float64) {
	r.v[r.next] = float32(x)
	r.next = (r.next + 1) % len(r.v)
	r.n = min(r.n+1, len(r.v))
}

// last returns up to k values, oldest first.
func (r *ring) last(k int) []float64 {
	k = min(k, r.n)
	out := make([]float64, k)
	for i := range k {
		out[i] = float64(r.v[(r.next-k+i+len(r.v))%len(r.v)])
	}
	return out
}

type history struct{ accepted, delivered, fill ring }

// streamKey names a stream as the console shows it: two named clients'
// streams of one datasource (and token) have separate histories.
type streamKey struct{ ds, client, tokenID string }

type streamHistory struct {
	accepted, delivered ring
	prevAccepted        int64
	prevDelivered       int64
}

// counters are the totals read from the metrics at one moment.
type counters struct {
	at                                   time.Time
	accepted, delivered, quarantined     float64
	deadLettered, retries                float64
	dropped                              map[string]float64
	oldestHeld                           float64
	latencySum, latencyCount             float64
	spoolBacklog                         float64
	haveSpool                            bool
	acceptedRate, deliveredRate, latency float64 // filled by sample
}

// gather reads the totals from the registry.
func (c *Console) gather() counters {
	out := counters{at: time.Now(), dropped: map[string]float64{}}
	mfs, err := c.opts.Gatherer.Gather()
	if err != nil {
		c.opts.Log.Warn("console: reading the metrics", "err", err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "tbproxy_events_accepted_total":
				out.accepted += value(m)
			case "tbproxy_delivered_events_total":
				out.delivered += value(m)
			case "tbproxy_quarantined_events_total":
				out.quarantined += value(m)
			case "tbproxy_dead_lettered_events_total":
				out.deadLettered += value(m)
			case "tbproxy_upstream_retries_total":
				out.retries += value(m)
			case "tbproxy_dropped_events_total":
				out.dropped[label(m, "reason")] += value(m)
			case "tbproxy_buffer_oldest_event_age_seconds":
				out.oldestHeld = value(m)
			case "tbproxy_upstream_request_duration_seconds":
				out.latencySum += m.GetHistogram().GetSampleSum()
				out.latencyCount += float64(m.GetHistogram().GetSampleCount())
			case "tbproxy_spool_backlog_events":
				out.spoolBacklog, out.haveSpool = value(m), true
			}
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// latencyWindow is how many seconds the mean upstream latency covers.
const latencyWindow = 60

// sample records one second: the totals' rates and fill, and each stream's
// accepted and delivered events since the last sample. Streams the flusher
// forgot are forgotten here too.
func (c *Console) sample(now time.Time) {
	cur := c.gather()
	streams := c.opts.Flusher.Streams()
	fill := c.opts.Buffer.Fill()

	c.mu.Lock()
	defer c.mu.Unlock()
	if prev := c.last; !prev.at.IsZero() {
		if dt := cur.at.Sub(prev.at).Seconds(); dt > 0 {
			cur.acceptedRate = max(cur.accepted-prev.accepted, 0) / dt
			cur.deliveredRate = max(cur.delivered-prev.delivered, 0) / dt
		}
	}
	c.lat[c.latNext] = [2]float64{cur.latencySum, cur.latencyCount}
	c.latNext = (c.latNext + 1) % latencyWindow
	if old := c.lat[c.latNext]; cur.latencyCount > old[1] {
		cur.latency = (cur.latencySum - old[0]) / (cur.latencyCount - old[1])
	}
	c.totals.accepted.push(cur.acceptedRate)
	c.totals.delivered.push(cur.deliveredRate)
	c.totals.fill.push(fill)
	c.last = cur

	alive := make(map[streamKey]bool, len(streams))
	for _, st := range streams {
		k := streamKey{st.Datasource, st.Client, st.TokenID}
		alive[k] = true
		h := c.streams[k]
		if h == nil {
			h = &streamHistory{prevAccepted: st.Accepted, prevDelivered: st.Delivered}
			c.streams[k] = h
		}
		h.accepted.push(float64(max(st.Accepted-h.prevAccepted, 0)))
		h.delivered.push(float64(max(st.Delivered-h.prevDelivered, 0)))
		h.prevAccepted, h.prevDelivered = st.Accepted, st.Delivered
	}
	for k := range c.streams {
		if !alive[k] {
			delete(c.streams, k)
		}
	}
}

// Status is what /-/api/streams answers: the streams of datasource name,
// with their whole history, or every stream with its last minute.
func (c *Console) Status(name string) Status {
	now := time.Now()
	cur := c.gather()
	streams := c.opts.Flusher.Streams()
	bs := c.opts.Buffer.Stats()

	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{
		Time:          now.UTC(),
		UptimeSeconds: now.Sub(c.started).Seconds(),
		Totals: Totals{
			AcceptedPerSecond:      c.last.acceptedRate,
			DeliveredPerSecond:     c.last.deliveredRate,
			Accepted:               int64(cur.accepted),
			Delivered:              int64(cur.delivered),
			Quarantined:            int64(cur.quarantined),
			DeadLettered:           int64(cur.deadLettered),
			Dropped:                make(map[string]int64, len(cur.dropped)),
			Retries:                int64(cur.retries),
			BufferEvents:           int64(bs.Events),
			BufferMaxEvents:        int64(bs.MaxEvents),
			BufferBytes:            int64(bs.Bytes),
			BufferMaxBytes:         int64(bs.MaxBytes),
			OldestHeldSeconds:      cur.oldestHeld,
			UpstreamLatencySeconds: c.last.latency,
		},
		Streams: make([]Stream, 0, len(streams)),
		Samples: Samples{
			IntervalSeconds: 1,
			Accepted:        c.totals.accepted.last(SampleSeconds),
			Delivered:       c.totals.delivered.last(SampleSeconds),
			BufferFill:      c.totals.fill.last(SampleSeconds),
		},
	}
	for reason, n := range cur.dropped {
		st.Totals.Dropped[reason] = int64(n)
	}
	if cur.haveSpool {
		n := int64(cur.spoolBacklog)
		st.Totals.SpoolBacklogEvents = &n
	}
	keep := StreamSampleSeconds
	if name != "" {
		keep = SampleSeconds
	}
	for _, s := range streams {
		if name != "" && s.Datasource != name {
			continue
		}
		out := Stream{
			Datasource: s.Datasource, Client: s.Client, TokenID: s.TokenID,
			HeldEvents: s.HeldEvents, HeldBytes: s.HeldBytes,
			Accepted: s.Accepted, Delivered: s.Delivered, Quarantined: s.Quarantined,
			DeadLettered: s.DeadLettered, Dropped: s.Dropped, InFlightBatches: s.InFlight,
			LastStatus: s.LastStatus, LastError: s.LastError, Paused: s.Paused,
			Samples: StreamSamples{Accepted: []float64{}, Delivered: []float64{}},
		}
		if !s.Oldest.IsZero() {
			out.OldestSeconds = max(now.Sub(s.Oldest).Seconds(), 0)
		}
		if !s.LastDelivery.IsZero() {
			t := s.LastDelivery.UTC()
			out.LastDelivery = &t
		}
		if h := c.streams[streamKey{s.Datasource, s.Client, s.TokenID}]; h != nil {
			out.Samples = StreamSamples{Accepted: h.accepted.last(keep), Delivered: h.delivered.last(keep)}
		}
		st.Streams = append(st.Streams, out)
	}
	return st
}
