package main

import (
	"bytes"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fasthttp"
)

// maxStatus bounds the status array; anything else is counted as code 0.
const maxStatus = 600

// ackChunk is how many bytes of acknowledged ids a worker gathers before
// writing them to the -acked file.
const ackChunk = 256 << 10

// worker drives one connection. Everything it touches per request is its
// own, allocated up front.
type worker struct {
	s    *runState
	id   int
	body *body
	reqs []*fasthttp.Request // one per datasource, headers set once
	resp *fasthttp.Response
	gz   *gzip.Writer
	zbuf bytes.Buffer
	acks []byte

	// Measured window (requests started, or scheduled, after the warm-up).
	lat      []int64 // nanoseconds, one per completed request
	status   [maxStatus]int64
	errs     int64
	errKinds map[string]int64
	badBody  int64
	ok       int64
	okBytes  int64 // uncompressed body bytes of 2xx requests
	wireSent int64 // bytes put on the wire (compressed with -gzip)
	lastDone time.Time

	// Whole run, warm-up included.
	allReqs    int64
	allStatus  [maxStatus]int64 // index 0: codes out of range
	allErrs    int64
	allOK      int64
	allOKBytes int64
	lateUnsent int64 // -rate with -duration: scheduled before the end, never sent
}

func newWorker(s *runState, id int) *worker {
	c := s.cfg
	w := &worker{
		s:        s,
		id:       id,
		body:     newBody(s.runID, id, c.events, time.Now()),
		resp:     fasthttp.AcquireResponse(),
		errKinds: map[string]int64{},
	}
	capHint := 1 << 15
	if c.rate > 0 && c.requests == 0 {
		capHint = int(c.rate*(c.duration+c.warmup).Seconds())/c.conns + 1024
	} else if c.requests > 0 {
		capHint = int(c.requests)/c.conns + 1024
	}
	w.lat = make([]int64, 0, capHint)
	for _, u := range s.uris {
		r := fasthttp.AcquireRequest()
		r.SetRequestURI(u)
		r.Header.SetMethod(fasthttp.MethodPost)
		r.Header.SetContentType("application/x-ndjson")
		if c.token != "" {
			r.Header.Set(fasthttp.HeaderAuthorization, "Bearer "+c.token)
		}
		if c.gzip {
			r.Header.Set(fasthttp.HeaderContentEncoding, "gzip")
		}
		w.reqs = append(w.reqs, r)
	}
	if c.gzip {
		w.gz, _ = gzip.NewWriterLevel(&w.zbuf, gzip.BestSpeed)
	}
	if s.ackFile != nil {
		w.acks = make([]byte, 0, ackChunk+c.events*(idWidth+1))
	}
	return w
}

func (w *worker) run() {
	defer w.flushAcks()
	s := w.s
	c := s.cfg
	// With -rate, connections are offset evenly within one interval.
	next := s.start.Add(time.Duration(int64(s.interval) * int64(w.id) / int64(c.conns)))
	now := s.start
	for n := 0; ; n++ {
		if s.stop.Load() {
			return
		}
		if c.requests > 0 {
			if s.issued.Add(1) > c.requests {
				return
			}
		}
		var sched time.Time
		if s.interval > 0 {
			sched = next
			next = next.Add(s.interval)
			if !s.end.IsZero() && !sched.Before(s.end) {
				return
			}
			if d := sched.Sub(now); d > 0 {
				time.Sleep(d)
			} else if !s.end.IsZero() && !now.Before(s.end) {
				// Behind schedule at the end: count what was never sent.
				w.lateUnsent += int64(s.end.Sub(sched)/s.interval) + 1
				return
			}
		} else if !s.end.IsZero() && !now.Before(s.end) {
			return
		}

		req := w.reqs[(w.id+n)%len(w.reqs)]
		raw := w.body.next()
		wire := raw
		if w.gz != nil {
			w.zbuf.Reset()
			w.gz.Reset(&w.zbuf)
			w.gz.Write(raw)
			w.gz.Close()
			wire = w.zbuf.Bytes()
		}
		req.SetBodyRaw(wire)
		t0 := time.Now()
		if sched.IsZero() {
			sched = t0
		}
		err := s.client.Do(req, w.resp)
		now = time.Now()
		w.record(sched, now, err, len(raw), len(wire))
		if err != nil && s.interval == 0 {
			// Do not spin on a refused connection.
			time.Sleep(10 * time.Millisecond)
			now = time.Now()
		}
	}
}

func (w *worker) record(sched, done time.Time, err error, rawLen, wireLen int) {
	s := w.s
	w.allReqs++
	if err != nil {
		w.allErrs++
	}
	code := 0
	good := false
	if err == nil {
		code = w.resp.StatusCode()
		if code > 0 && code < maxStatus {
			w.allStatus[code]++
		} else {
			w.allStatus[0]++
		}
		good = code >= 200 && code < 300 && bytes.Equal(bytes.TrimSpace(w.resp.Body()), s.okBody)
		if good {
			w.allOK++
			w.allOKBytes += int64(rawLen)
			if s.ackFile != nil {
				w.acks = w.body.appendIDs(w.acks)
				if len(w.acks) >= ackChunk {
					s.writeAcked(w.acks)
					w.acks = w.acks[:0]
				}
			}
		}
	}
	if sched.Before(s.warmEnd) {
		return
	}
	w.lat = append(w.lat, int64(done.Sub(sched)))
	if done.After(w.lastDone) {
		w.lastDone = done
	}
	w.wireSent += int64(wireLen)
	switch {
	case err != nil:
		w.errs++
		k := err.Error()
		if len(k) > 120 {
			k = k[:120]
		}
		w.errKinds[k]++
	case code > 0 && code < maxStatus:
		w.status[code]++
	default:
		w.status[0]++
	}
	if err == nil && code >= 200 && code < 300 {
		if good {
			w.ok++
			w.okBytes += int64(rawLen)
		} else {
			w.badBody++
		}
	}
}

// flushAcks writes whatever ids are still gathered.
func (w *worker) flushAcks() {
	if w.s.ackFile != nil && len(w.acks) > 0 {
		w.s.writeAcked(w.acks)
		w.acks = w.acks[:0]
	}
}
