package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"time"
)

// report is the outcome of one run. Every field except the All* ones covers
// the measured window: requests started (or, with -rate, scheduled) after
// the warm-up.
type report struct {
	URL         string  `json:"url"`
	Conns       int     `json:"conns"`
	EventsPerRq int     `json:"events_per_request"`
	EventBytes  int     `json:"event_bytes"` // average event size, newline included
	Gzip        bool    `json:"gzip"`
	Rate        float64 `json:"rate"` // requested req/s; 0 = unpaced

	Requests   int64            `json:"requests"` // completed, any outcome
	OKRequests int64            `json:"ok_requests"`
	Events     int64            `json:"events"` // acknowledged events
	Bytes      int64            `json:"bytes"`  // uncompressed NDJSON bytes acknowledged
	WireBytes  int64            `json:"wire_bytes"`
	Seconds    float64          `json:"seconds"`
	ReqPerS    float64          `json:"req_per_s"`    // acknowledged requests per second
	EventsPerS float64          `json:"events_per_s"` // acknowledged events per second
	MiBPerS    float64          `json:"mib_per_s"`
	Status     map[string]int64 `json:"status"` // HTTP status -> count; "error" for transport errors
	BadBody    int64            `json:"bad_body"`
	Errors     map[string]int64 `json:"errors,omitempty"`
	LateUnsent int64            `json:"late_unsent,omitempty"`

	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
	LatOf string  `json:"latency_from"` // "send" or "schedule"

	AllRequests int64            `json:"all_requests"` // warm-up included
	AllStatus   map[string]int64 `json:"all_status"`   // like Status
	AllEvents   int64            `json:"all_events"`   // acknowledged, warm-up included
	AllBytes    int64            `json:"all_bytes"`    // acknowledged uncompressed bytes, warm-up included
}

func newReport(s *runState, ws []*worker) *report {
	c := s.cfg
	r := &report{
		URL: c.url, Conns: c.conns, EventsPerRq: c.events, EventBytes: s.eventSize,
		Gzip: c.gzip, Rate: c.rate, Status: map[string]int64{}, AllStatus: map[string]int64{}, Errors: map[string]int64{},
		LatOf: "send",
	}
	if c.rate > 0 {
		r.LatOf = "schedule"
	}
	var status, allStatus [maxStatus]int64
	var last time.Time
	n := 0
	for _, w := range ws {
		n += len(w.lat)
	}
	lat := make([]int64, 0, n)
	for _, w := range ws {
		lat = append(lat, w.lat...)
		for i, v := range w.status {
			status[i] += v
		}
		for i, v := range w.allStatus {
			allStatus[i] += v
		}
		if w.errs > 0 {
			r.Status["error"] += w.errs
		}
		if w.allErrs > 0 {
			r.AllStatus["error"] += w.allErrs
		}
		for k, v := range w.errKinds {
			r.Errors[k] += v
		}
		r.OKRequests += w.ok
		r.Bytes += w.okBytes
		r.WireBytes += w.wireSent
		r.BadBody += w.badBody
		r.LateUnsent += w.lateUnsent
		r.AllRequests += w.allReqs
		r.AllEvents += w.allOK * int64(c.events)
		r.AllBytes += w.allOKBytes
		if w.lastDone.After(last) {
			last = w.lastDone
		}
	}
	for code, v := range status {
		if v > 0 {
			r.Status[strconv.Itoa(code)] = v
		}
		if allStatus[code] > 0 {
			r.AllStatus[strconv.Itoa(code)] = allStatus[code]
		}
	}
	r.Requests = int64(len(lat))
	r.Events = r.OKRequests * int64(c.events)
	if last.After(s.warmEnd) {
		r.Seconds = last.Sub(s.warmEnd).Seconds()
	}
	if r.Seconds > 0 {
		r.ReqPerS = float64(r.OKRequests) / r.Seconds
		r.EventsPerS = float64(r.Events) / r.Seconds
		r.MiBPerS = float64(r.Bytes) / r.Seconds / (1 << 20)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		var sum int64
		for _, v := range lat {
			sum += v
		}
		r.P50 = ms(quantile(lat, 0.50))
		r.P90 = ms(quantile(lat, 0.90))
		r.P99 = ms(quantile(lat, 0.99))
		r.P999 = ms(quantile(lat, 0.999))
		r.Max = ms(lat[len(lat)-1])
		r.Mean = ms(sum / int64(len(lat)))
	}
	return r
}

// quantile returns the nearest-rank q-quantile of sorted samples.
func quantile(sorted []int64, q float64) int64 {
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func (r *report) printHuman(w io.Writer) {
	mode := "unpaced"
	if r.Rate > 0 {
		mode = fmt.Sprintf("paced at %.0f req/s, latency from scheduled send", r.Rate)
	}
	fmt.Fprintf(w, "loadgen %s: %d conns, %d events/request (~%d B each), gzip=%v, %s\n",
		r.URL, r.Conns, r.EventsPerRq, r.EventBytes, r.Gzip, mode)
	fmt.Fprintf(w, "  measured %.2fs: %d requests, %d acknowledged\n", r.Seconds, r.Requests, r.OKRequests)
	fmt.Fprintf(w, "  %.0f req/s, %.0f events/s, %.1f MiB/s (acknowledged only)\n", r.ReqPerS, r.EventsPerS, r.MiBPerS)
	fmt.Fprintf(w, "  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
		r.P50, r.P90, r.P99, r.P999, r.Max, r.Mean)
	fmt.Fprintf(w, "  status:")
	for _, k := range slices.Sorted(maps.Keys(r.Status)) {
		fmt.Fprintf(w, " %s=%d", k, r.Status[k])
	}
	fmt.Fprintln(w)
	if r.BadBody > 0 {
		fmt.Fprintf(w, "  WARNING: %d 2xx answers without the expected body\n", r.BadBody)
	}
	if r.LateUnsent > 0 {
		fmt.Fprintf(w, "  WARNING: fell behind the schedule; %d scheduled requests were never sent\n", r.LateUnsent)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
		fmt.Fprintf(w, "  error x%d: %s\n", r.Errors[k], k)
	}
	fmt.Fprintf(w, "  whole run (warm-up included): %d requests, %d events acknowledged, %d bytes; status:",
		r.AllRequests, r.AllEvents, r.AllBytes)
	for _, k := range slices.Sorted(maps.Keys(r.AllStatus)) {
		fmt.Fprintf(w, " %s=%d", k, r.AllStatus[k])
	}
	fmt.Fprintln(w)
}
