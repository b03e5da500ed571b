package spool

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
)

// logRecorder keeps what a spool logs, so a test can check what an
// operator would read. Safe for concurrent use. The spool logs no
// attributes through With, so WithAttrs and WithGroup return it unchanged.
type logRecorder struct {
	mu   sync.Mutex // protects recs
	recs []slog.Record
	kick chan struct{} // capacity 1: kicked after every record
}

func newLogRecorder() *logRecorder { return &logRecorder{kick: make(chan struct{}, 1)} }

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return nil
}

// find returns the first record whose message starts with msg.
func (l *logRecorder) find(msg string) (slog.Record, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		if strings.HasPrefix(r.Message, msg) {
			return r, true
		}
	}
	return slog.Record{}, false
}

// atLeast returns the messages logged at level or above.
func (l *logRecorder) atLeast(level slog.Level) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		if r.Level >= level {
			out = append(out, r.Level.String()+" "+r.Message)
		}
	}
	return out
}

// waitFor waits up to 5 seconds for a record whose message starts with msg.
func (l *logRecorder) waitFor(t *testing.T, msg string) slog.Record {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		if r, ok := l.find(msg); ok {
			return r
		}
		select {
		case <-l.kick:
		case <-timeout:
			t.Fatalf("nothing logged like %q in 5s; logged: %q", msg, l.atLeast(slog.LevelDebug))
		}
	}
}

// attr returns the value of r's attribute key.
func attr(r slog.Record, key string) (slog.Value, bool) {
	var v slog.Value
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v, found = a.Value, true
			return false
		}
		return true
	})
	return v, found
}

// openObserved opens a spool on dir whose logs and metrics the test reads.
func openObserved(t *testing.T, dir string, buf *buffer.Buffer, opts Options) (*Spool, *logRecorder, *prometheus.Registry) {
	t.Helper()
	opts.Dir = dir
	logs := newLogRecorder()
	reg := prometheus.NewRegistry()
	s, err := Open(buf, opts, reg, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // before TempDir's removal; Close is idempotent
	return s, logs, reg
}

// metric returns what reg exports as name: a gauge's or counter's value,
// or a histogram's count of observations.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// fsyncs is how many fsyncs the spool has made, as an operator sees them:
// the count of tbproxy_spool_fsync_duration_seconds.
func fsyncs(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	return metric(t, reg, "tbproxy_spool_fsync_duration_seconds")
}

// diskBytes is the size of the segment files in dir.
func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	for _, p := range segments(t, dir) {
		n += fileSize(t, p)
	}
	return n
}

// dirNames lists dir's entries by name.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// put stores one request of rows for datasource ds, failing the test if
// it is refused.
func put(t *testing.T, s *Spool, ds string, rows ...string) {
	t.Helper()
	if err := s.PutWaiting(buffer.Key{Datasource: ds}, lines(rows...), nil); err != nil {
		t.Fatalf("put %v to %s: %v", rows, ds, err)
	}
}

// finish plays the flusher for one taken entry: delivered, or failed with f.
func finish(buf *buffer.Buffer, e buffer.Entry, f *buffer.Failure) {
	e.Waiter.AddPart()
	e.Waiter.Finish(e.Rows, 0, f)
	buf.Release(e.Key, e.Rows, e.Data)
}

// replayed restarts a spool on dir and returns it and the rows it
// replayed, oldest first. They stay owed: nothing is delivered.
func replayed(t *testing.T, dir string, opts Options) (*Spool, []string) {
	t.Helper()
	buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
	s := open(t, dir, buf, opts)
	n, err := s.Replay(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, e := range buf.Take(nil) {
		rows = append(rows, strings.Split(strings.TrimSuffix(string(e.Data), "\n"), "\n")...)
		buf.Release(e.Key, e.Rows, e.Data) // the entries stay owed
	}
	if n != len(rows) {
		t.Fatalf("Replay said %d events; %d reached the buffer", n, len(rows))
	}
	return s, rows
}

// framedLen is the size on disk of one request of rows for ds.
func framedLen(ds string, rows ...string) int64 {
	return int64(len(appendData(nil, syncMarker{}, buffer.Key{Datasource: ds}, lines(rows...), false, 0)))
}

// chattr sets or clears the immutable flag on path, and skips the test
// where that is not possible (no chattr, not root, a filesystem without
// the flag). A flag it set is cleared when the test ends.
func chattr(t *testing.T, flag, path string) {
	t.Helper()
	out, err := exec.Command("chattr", flag, path).CombinedOutput()
	if err != nil {
		if flag == "-i" {
			t.Fatalf("chattr -i %s: %v %s", path, err, out)
		}
		t.Skipf("chattr +i: %v %s", err, out)
	}
	if flag == "+i" {
		t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })
	}
}

// has reports whether names holds name.
func has(names []string, name string) bool { return slices.Contains(names, name) }
