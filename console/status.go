package console

import "time"

// Status is what GET /-/api/streams answers: the proxy's totals, one row
// per stream, and the last minutes of totals sampled once a second. It
// holds no token and no event contents: a stream is named by its
// datasource, the name of its client (CLIENTS_FILE) if it has one, and, in
// pass-through mode, a short, non-reversible id of its token.
type Status struct {
	Time          time.Time `json:"time"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	Totals        Totals    `json:"totals"`
	Streams       []Stream  `json:"streams"`
	// Samples are the totals once a second over the last SampleSeconds,
	// oldest first; shorter right after start.
	Samples Samples `json:"samples"`
}

// Totals sum every stream, and add what belongs to none.
type Totals struct {
	AcceptedPerSecond  float64 `json:"accepted_per_second"`  // events into the buffer, last second
	DeliveredPerSecond float64 `json:"delivered_per_second"` // events upstream acknowledged, last second
	Accepted           int64   `json:"accepted"`             // since start
	Delivered          int64   `json:"delivered"`
	Quarantined        int64   `json:"quarantined"`
	DeadLettered       int64   `json:"dead_lettered"`
	// Dropped counts acknowledged events not delivered, by reason (the
	// reasons of tbproxy_dropped_events_total).
	Dropped         map[string]int64 `json:"dropped"`
	Retries         int64            `json:"retries"`
	BufferEvents    int64            `json:"buffer_events"`
	BufferMaxEvents int64            `json:"buffer_max_events"`
	BufferBytes     int64            `json:"buffer_bytes"`
	BufferMaxBytes  int64            `json:"buffer_max_bytes"`
	// OldestHeldSeconds is the age of the oldest event in memory; 0 when
	// none is held.
	OldestHeldSeconds float64 `json:"oldest_held_seconds"`
	// UpstreamLatencySeconds is the mean time of the upstream requests
	// answered in the last minute; 0 when none was.
	UpstreamLatencySeconds float64 `json:"upstream_latency_seconds"`
	// SpoolBacklogEvents are events on disk not in memory yet (SPOOL_DIR
	// only; absent otherwise).
	SpoolBacklogEvents *int64 `json:"spool_backlog_events,omitempty"`
}

// Stream is one datasource of one named client (and, in pass-through mode,
// one client token).
type Stream struct {
	Datasource string `json:"datasource"`
	// Client is the name of the client (CLIENTS_FILE) the stream's events
	// came from, never its token; absent for unnamed clients and for
	// events replayed from disk or a queue.
	Client string `json:"client,omitempty"`
	// TokenID is the first 8 hex digits of the SHA-256 of the client's
	// token, in pass-through mode only: enough to tell tokens apart, never
	// the token.
	TokenID         string  `json:"token_id,omitempty"`
	HeldEvents      int64   `json:"held_events"`
	HeldBytes       int64   `json:"held_bytes"`
	OldestSeconds   float64 `json:"oldest_seconds"` // age of its oldest held event; 0 if none
	Accepted        int64   `json:"accepted"`       // since start, or since the stream appeared
	Delivered       int64   `json:"delivered"`
	Quarantined     int64   `json:"quarantined"`
	DeadLettered    int64   `json:"dead_lettered"`
	Dropped         int64   `json:"dropped"`
	InFlightBatches int     `json:"in_flight_batches"`
	// LastStatus is upstream's last HTTP status for this stream (0: none
	// yet, or no answer); LastError its last error text ("" after a
	// success).
	LastStatus   int        `json:"last_status"`
	LastError    string     `json:"last_error"`
	LastDelivery *time.Time `json:"last_delivery"` // null until something was delivered
	Paused       bool       `json:"paused"`
	// Samples are its accepted and delivered events per second over the
	// last StreamSampleSeconds, oldest first.
	Samples StreamSamples `json:"samples"`
}

// Samples is the totals' history, one value a second.
type Samples struct {
	IntervalSeconds int       `json:"interval_seconds"`
	Accepted        []float64 `json:"accepted"`    // events/s
	Delivered       []float64 `json:"delivered"`   // events/s
	BufferFill      []float64 `json:"buffer_fill"` // 0..1, the larger of events and bytes
}

// StreamSamples is one stream's history, one value a second.
type StreamSamples struct {
	Accepted  []float64 `json:"accepted"`
	Delivered []float64 `json:"delivered"`
}

const (
	// SampleSeconds is how much history the totals keep: 15 minutes.
	SampleSeconds = 15 * 60
	// StreamSampleSeconds is how much of a stream's history the JSON
	// carries by default (GET /-/api/streams?name=<datasource> carries all
	// SampleSeconds of that datasource's streams).
	StreamSampleSeconds = 60
)
