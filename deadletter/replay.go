package deadletter

import (
	"bytes"
	"context"

	"github.com/tbproxy/tbproxy/buffer"
)

// replayEntryRows is the most rows Feed puts into the buffer at once.
const replayEntryRows = 1000

// Replay is a file's rows on their way upstream: Feed put them into a
// buffer, and the flusher draining it tells Replay what became of each
// entry. Safe for concurrent use once Feed has returned it.
type Replay struct {
	entries []replayEntry
}

// replayEntry is one entry Feed put into the buffer, and the Waiter the
// flusher reports its outcome to.
type replayEntry struct {
	rows int
	w    *buffer.Waiter
}

// ReplayOutcome is what became of the rows a Replay put into the buffer.
type ReplayOutcome struct {
	// Rows were put into the buffer.
	Rows int
	// Delivered rows were acknowledged upstream, as written or as
	// quarantined: replaying those again would not change that.
	Delivered int
	// Dropped rows were refused for good, not acknowledged (a short
	// acknowledgement), or still held at the drain deadline.
	Dropped int
}

// Feed puts every non-blank line of file into buf under key, byte-identical,
// in entries of up to 1000 rows, waiting while buf is full (buffer.PutWait)
// until ctx ends. Lines longer than maxLine are an error; CheckFile the file
// first. Feed returns a Replay of the rows it put, never nil, even with an
// error (reading the file, ctx's, or the buffer's).
func Feed(ctx context.Context, buf *buffer.Buffer, key buffer.Key, file string, maxLine int) (*Replay, error) {
	r := new(Replay)
	var lines [][]byte
	put := func() error {
		w := buffer.NewWaiter()
		err := buf.PutWait(ctx, key, lines, w)
		if err == nil && len(lines) > 0 {
			r.entries = append(r.entries, replayEntry{rows: len(lines), w: w})
		}
		lines = lines[:0]
		return err
	}
	err := eachRow(file, maxLine, func(_ int, line []byte) error {
		lines = append(lines, bytes.Clone(line)) // Scan reuses its buffer
		if len(lines) == replayEntryRows {
			return put()
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	return r, put()
}

// Wait blocks until the outcome of every row put is known, or ctx ends;
// then it returns ctx.Err().
func (r *Replay) Wait(ctx context.Context) error {
	for _, e := range r.entries {
		select {
		case <-e.w.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Outcome counts the rows put and, of those whose outcome is known,
// the rows delivered and dropped; after Wait returned nil it is final.
func (r *Replay) Outcome() ReplayOutcome {
	var o ReplayOutcome
	for _, e := range r.entries {
		o.Rows += e.rows
		select {
		case <-e.w.Done():
			successful, quarantined, _ := e.w.Result()
			o.Delivered += successful + quarantined
			o.Dropped += e.rows - successful - quarantined
		default: // still on its way
		}
	}
	return o
}
