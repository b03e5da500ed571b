// Package deadletter keeps the rows the proxy acknowledged and then could
// not deliver: each dropped batch's rows are appended to
// <dir>/<datasource>.ndjson and a Record of why to
// <dir>/<datasource>.errors.jsonl, so an operator can replay them
// (tbproxy replay, or curl). The flusher writes what upstream refused or a
// shutdown left behind, the JetStream queue what it gave up redelivering.
// CheckFile, Feed and Replay are the other way back: tbproxy replay sends
// such a file through a buffer and flusher again and reports, from each
// row's outcome, what was delivered.
package deadletter

import (
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	json "github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/datafile"
	"github.com/tbproxy/tbproxy/upstream"
)

// Record describes one dropped batch: one line of
// <dir>/<datasource>.errors.jsonl. Offset and Bytes locate its rows in
// <dir>/<datasource>.ndjson, so an operator can cut them out and replay them
// (tbproxy replay, or curl). File names follow datafile.Stem; Datasource is
// the whole name.
type Record struct {
	Time       time.Time `json:"time"`
	Datasource string    `json:"datasource"`
	Reason     string    `json:"reason"`
	Status     int       `json:"status"`
	Error      string    `json:"error"`
	Rows       int       `json:"rows"`
	Bytes      int       `json:"bytes"`
	Offset     int64     `json:"offset"`
	File       string    `json:"file"`
}

// Writer appends dropped batches to files in a directory, and counts them
// in tbproxy_dead_lettered_events_total (or, when a write fails, in
// tbproxy_dead_letter_errors_total, with a log line). Tokens are never
// written: replaying a pass-through batch needs its token again. Safe for
// concurrent use. The zero value is a Writer that is off: it writes and
// counts nothing.
type Writer struct {
	dir     string
	log     *slog.Logger
	written prometheus.Counter
	failed  prometheus.Counter

	mu sync.Mutex // serialises appends, so batches and their records pair up
}

// New returns a Writer into dir, which it creates if needed, and registers
// its metrics on reg; an error means dir cannot be created or a metric was
// already registered. With dir "" the Writer is off, but its metrics are
// exported all the same, at zero, so dashboards see the series whether or
// not DEAD_LETTER_DIR is set.
func New(dir string, reg prometheus.Registerer, log *slog.Logger) (*Writer, error) {
	w := &Writer{
		dir: dir,
		log: log,
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_dead_lettered_events_total",
			Help: "Dropped events written to DEAD_LETTER_DIR.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tbproxy_dead_letter_errors_total",
			Help: "Dropped batches that could not be written to DEAD_LETTER_DIR.",
		}),
	}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("dead-letter directory: %w", err)
		}
	}
	for _, c := range []prometheus.Collector{w.written, w.failed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("deadletter: register metrics: %w", err)
		}
	}
	return w, nil
}

// Dir returns the directory dead letters go to; "" when the Writer is off.
func (w *Writer) Dir() string { return w.dir }

// Write appends b's rows to <dir>/<datasource>.ndjson, then its Record,
// made from f, to <dir>/<datasource>.errors.jsonl, both synced. It returns
// the rows' file, or "" when the Writer is off or the write failed (logged
// and counted). It does not keep b. It blocks on the disk, and on other
// writes.
func (w *Writer) Write(b *upstream.Batch, f *buffer.Failure) string {
	if w.dir == "" {
		return ""
	}
	path, err := w.write(b, f, time.Now())
	if err != nil {
		w.failed.Inc()
		w.log.Error("cannot write dead letter", "datasource", b.Key.Datasource, "events", b.Rows, "err", err)
		return ""
	}
	w.written.Add(float64(b.Rows))
	return path
}

// WriteRows is Write for rows that are not in a batch: a JetStream message
// delivered too many times (issue #8). data is rows NDJSON lines, each
// ending in '\n'; it is not kept.
func (w *Writer) WriteRows(key buffer.Key, data []byte, rows int, f *buffer.Failure) string {
	return w.Write(&upstream.Batch{Key: key, Rows: rows, Bytes: len(data), Parts: [][]byte{data}}, f)
}

func (w *Writer) write(b *upstream.Batch, f *buffer.Failure, now time.Time) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	stem := datafile.Stem(b.Key.Datasource)
	rowsPath := filepath.Join(w.dir, stem+".ndjson")
	offset, err := datafile.Append(rowsPath, func(out io.Writer) error {
		_, err := b.WriteTo(out)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("append %d rows to %s: %w", b.Rows, rowsPath, err)
	}
	rec, err := json.Marshal(Record{
		Time: now.UTC(), Datasource: b.Key.Datasource, Reason: f.Reason, Status: f.Status,
		Error: cmp.Or(f.Detail, f.Message), Rows: b.Rows, Bytes: b.Bytes, Offset: offset, File: filepath.Base(rowsPath),
	})
	if err != nil {
		return "", err
	}
	metaPath := filepath.Join(w.dir, stem+".errors.jsonl")
	if _, err := datafile.Append(metaPath, func(out io.Writer) error {
		_, err := out.Write(append(rec, '\n'))
		return err
	}); err != nil {
		return "", fmt.Errorf("append record to %s: %w", metaPath, err)
	}
	return rowsPath, nil
}
