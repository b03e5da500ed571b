package limits

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	json "github.com/goccy/go-json"
)

const (
	// maxKeyLen bounds a key in a report, in bytes: a client name or a
	// SHA-256 digest is far shorter.
	maxKeyLen = 256
	// maxReplicaLen bounds a report's replica id, in bytes.
	maxReplicaLen = 256
	// maxCountBytes bounds one identity's JSON in a report: a 256-byte
	// key escaped as \u00XX (1,536 bytes) and three 19-digit counts.
	maxCountBytes = 2048
)

// report is AppendReport's JSON, e.g.
//
//	{"replica":"a1","minute":29616000,"day":20566,"counts":[{"k":"acme","c":30,"p":5,"d":35}]}
//
// Minute and Day are the reporter's current windows when it reported.
type report struct {
	Replica string        `json:"replica"`
	Minute  int64         `json:"minute"` // Unix minute
	Day     int64         `json:"day"`    // UTC day, days since the epoch: Minute/1440
	Counts  []reportCount `json:"counts"`
}

// reportCount is one identity's events admitted since the previous
// report, minus refunds, per window.
type reportCount struct {
	// Key is the identity when it is valid UTF-8; otherwise (a raw
	// digest) it is in Raw, base64 in JSON, since JSON strings would turn
	// its invalid bytes into U+FFFD and make distinct keys collide.
	Key  string `json:"k,omitempty"`
	Raw  []byte `json:"b,omitempty"`
	Cur  int64  `json:"c,omitempty"` // in report.Minute
	Prev int64  `json:"p,omitempty"` // in report.Minute−1
	Day  int64  `json:"d,omitempty"` // in report.Day

	id string // the key from Key or Raw, set by validate
}

// AppendReport appends to dst a compact JSON report of the events this
// Limiter admitted (minus refunds) per identity and window since its
// previous report, tagged with replica (an id unique per process), and
// resets those deltas: each event is reported once. It returns dst
// unchanged when there is nothing to report. A report holds only the
// identities that admitted events since the previous one, about 30 bytes
// plus the key each (a raw SHA-256 digest takes 44 in base64;
// BenchmarkReport).
//
// Only the current and previous minute and the current day are reported:
// older windows no longer count anywhere. A report the caller fails to
// deliver is lost: the others under-count its events (package
// documentation). Safe for concurrent use; concurrent calls run one at a
// time. dst is owned by the caller.
func (l *Limiter) AppendReport(dst []byte, replica string) []byte {
	l.reportMu.Lock()
	defer l.reportMu.Unlock()
	at := instantOf(l.now())
	cs := l.scratch[:0]
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.RLock()
		for k, e := range s.m {
			e.mu.Lock()
			c := e.unsent(at)
			e.mu.Unlock()
			if c.Cur|c.Prev|c.Day == 0 {
				continue
			}
			if utf8.ValidString(k) {
				c.Key = k
			} else {
				c.Raw = []byte(k)
			}
			cs = append(cs, c)
		}
		s.mu.RUnlock()
	}
	defer func() {
		clear(cs) // keeps no key alive
		l.scratch = cs[:0]
	}()
	if len(cs) == 0 {
		return dst
	}
	b, err := json.Marshal(report{Replica: replica, Minute: at.minute, Day: at.day, Counts: cs})
	if err != nil {
		// Strings, byte slices and integers always encode.
		panic("limits: encode report: " + err.Error())
	}
	return append(dst, b...)
}

// unsent returns e's unreported events in the windows of `at`, and marks
// them reported.
func (e *entry) unsent(at instant) reportCount {
	e.align(at)
	var c reportCount
	if e.minute == at.minute { // else the clock stepped back: report when it catches up
		c.Cur, c.Prev = e.win[0].unsent(), e.win[1].unsent()
	}
	if e.day == at.day {
		c.Day = e.dayc.unsent()
	}
	return c
}

// Merge adds another replica's report (AppendReport's output) to the
// remote counts of the matching windows: a window the receiver's clock
// does not take as its current or previous minute, or its current day, is
// ignored, and a report from self (this process's own replica id) is
// ignored. It validates the whole report first (size bounded by MaxKeys,
// known fields only, replica id and keys of at most 256 bytes, window ids
// non-negative and consistent, counts non-negative, no key twice) and
// returns an error for a malformed one without applying any of it; the
// error names no key. New identities count toward MaxKeys like local ones;
// those the table has no room for are skipped (Stats.MergeSkipped). Safe
// for concurrent use; data is not retained.
func (l *Limiter) Merge(data []byte, self string) error {
	if maxLen := l.maxReportLen(); len(data) > maxLen {
		return fmt.Errorf("limits: report of %d bytes, above %d", len(data), maxLen)
	}
	var r report
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return fmt.Errorf("limits: decode report: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("limits: decode report: data after the report")
	}
	if err := r.validate(l.maxKeys); err != nil {
		return fmt.Errorf("limits: malformed report: %w", err)
	}
	if r.Replica == self {
		return nil
	}
	at := instantOf(l.now())
	for i := range r.Counts {
		c := &r.Counts[i]
		if !c.applies(r.Minute, r.Day, at) {
			continue
		}
		for {
			e := l.get(c.id, at, true)
			if e == nil {
				l.mergeSkipped.Add(1)
				break
			}
			e.mu.Lock()
			if e.dead {
				e.mu.Unlock()
				continue
			}
			e.addRemote(r.Minute, r.Day, c, at)
			e.mu.Unlock()
			break
		}
	}
	return nil
}

// maxReportLen bounds a report's size: at most MaxKeys identities.
func (l *Limiter) maxReportLen() int {
	return 256 + maxReplicaLen*6 + int(l.maxKeys)*maxCountBytes
}

func (r *report) validate(maxKeys int64) error {
	switch {
	case r.Replica == "":
		return errors.New("no replica id")
	case len(r.Replica) > maxReplicaLen:
		return fmt.Errorf("replica id above %d bytes", maxReplicaLen)
	case r.Minute < 0 || r.Day < 0:
		return fmt.Errorf("negative window (minute %d, day %d)", r.Minute, r.Day)
	case r.Day != r.Minute/minutesPerDay:
		return fmt.Errorf("day %d is not the day of minute %d", r.Day, r.Minute)
	case len(r.Counts) == 0:
		return errors.New("no counts")
	case int64(len(r.Counts)) > maxKeys:
		return fmt.Errorf("%d identities, above %d", len(r.Counts), maxKeys)
	}
	seen := make(map[string]struct{}, len(r.Counts))
	for i := range r.Counts {
		c := &r.Counts[i]
		c.id = c.Key
		if len(c.Raw) > 0 {
			c.id = string(c.Raw)
		}
		switch {
		case c.Key != "" && len(c.Raw) > 0:
			return fmt.Errorf("count %d: both k and b", i)
		case len(c.id) > maxKeyLen:
			return fmt.Errorf("count %d: key of %d bytes, above %d", i, len(c.id), maxKeyLen)
		case c.Cur < 0 || c.Prev < 0 || c.Day < 0:
			return fmt.Errorf("count %d: negative count", i)
		case c.Cur|c.Prev|c.Day == 0:
			return fmt.Errorf("count %d: no events", i)
		}
		if _, dup := seen[c.id]; dup {
			return fmt.Errorf("count %d: key repeated", i)
		}
		seen[c.id] = struct{}{}
	}
	return nil
}

// applies reports whether c adds anything to the windows of `at`, so that
// a report does not make the receiver track an identity for nothing.
func (c *reportCount) applies(minute, day int64, at instant) bool {
	inWindows := func(m int64) bool { return m == at.minute || m == at.minute-1 }
	return c.Cur > 0 && inWindows(minute) || c.Prev > 0 && inWindows(minute-1) || c.Day > 0 && day == at.day
}

// addRemote adds c's counts to the windows they were reported for, if
// those are e's current or previous minute or its current day.
func (e *entry) addRemote(minute, day int64, c *reportCount, at instant) {
	e.align(at)
	for _, w := range [2]struct{ minute, n int64 }{{minute, c.Cur}, {minute - 1, c.Prev}} {
		switch w.minute {
		case e.minute:
			e.win[0].remote = satAdd(e.win[0].remote, w.n)
		case e.minute - 1:
			e.win[1].remote = satAdd(e.win[1].remote, w.n)
		}
	}
	if day == e.day {
		e.dayc.remote = satAdd(e.dayc.remote, c.Day)
	}
}
