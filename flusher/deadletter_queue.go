package flusher

import (
	"time"

	"github.com/tbproxy/tbproxy/buffer"
)

// DeadLetter writes rows that never reached the buffer (a JetStream queue
// message delivered too many times, issue #8) to DeadLetterDir, in the same
// files and format as the flusher's own dead letters, and counts them in
// tbproxy_dead_lettered_events_total. data is rows NDJSON lines, each ending
// in '\n'; it is not retained. It returns the rows' file, or "" when
// DeadLetterDir is unset or the write failed (logged and counted). Safe for
// concurrent use with Run.
func (f *Flusher) DeadLetter(key buffer.Key, data []byte, rows int, failure *buffer.Failure) string {
	b := &Batch{Key: key}
	b.add(data, rows, time.Now().UnixNano(), nil)
	return f.deadLetter(b, failure)
}
