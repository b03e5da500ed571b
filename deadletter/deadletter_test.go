package deadletter

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	json "github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/datafile"
	"github.com/tbproxy/tbproxy/upstream"
)

func newWriter(t *testing.T, dir string) (*Writer, *prometheus.Registry, *bytes.Buffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	w, err := New(dir, reg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return w, reg, &logs
}

// batch returns a batch for key holding one part per element of parts.
func batch(key buffer.Key, parts ...string) *upstream.Batch {
	b := &upstream.Batch{Key: key}
	for _, p := range parts {
		b.Parts = append(b.Parts, []byte(p))
		b.Rows += strings.Count(p, "\n")
		b.Bytes += len(p)
	}
	return b
}

// readRecords returns the records in path: none if it cannot be read, so
// the callers' counts fail.
func readRecords(t *testing.T, path string) (recs []Record) {
	t.Helper()
	meta, _ := os.ReadFile(path)
	for line := range bytes.Lines(meta) {
		var rec Record
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		recs = append(recs, rec)
	}
	return recs
}

const metricsHelp = `
# HELP tbproxy_dead_letter_errors_total Dropped batches that could not be written to DEAD_LETTER_DIR.
# TYPE tbproxy_dead_letter_errors_total counter
tbproxy_dead_letter_errors_total %d
# HELP tbproxy_dead_lettered_events_total Dropped events written to DEAD_LETTER_DIR.
# TYPE tbproxy_dead_lettered_events_total counter
tbproxy_dead_lettered_events_total %d
`

// wantMetrics checks the writer's two counters: batches that could not be
// written, and rows that were.
func wantMetrics(t *testing.T, reg *prometheus.Registry, failed, written int) {
	t.Helper()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(metricsHelp, failed, written))); err != nil {
		t.Error(err)
	}
}

// TestWrite: each dropped batch's rows are appended to <dir>/<ds>.ndjson
// and a record to <dir>/<ds>.errors.jsonl saying when, why, and where its
// rows are; the record's error is the failure's detail when it has one;
// tokens are never written; the rows are counted.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	w, reg, _ := newWriter(t, dir)
	key := buffer.Key{Token: "secret-client-token", Datasource: "bad"}
	first := batch(key, "{\"a\":1}\n{\"a\":2}\n", "{\"a\":3}\n")
	if got := w.Write(first, &buffer.Failure{Status: 400, Reason: "upstream_rejected", Message: "column x is missing"}); got != filepath.Join(dir, "bad.ndjson") {
		t.Errorf("Write returned %q; want the rows' file", got)
	}
	w.WriteRows(key, []byte("{\"b\":1}\n"), 1, &buffer.Failure{Status: 503, Reason: "queue_max_deliver", Message: "short", Detail: "the whole story"})

	rows, err := os.ReadFile(filepath.Join(dir, "bad.ndjson"))
	if want := "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"b\":1}\n"; err != nil || string(rows) != want {
		t.Fatalf("bad.ndjson: got %q (err %v); want %q", rows, err, want)
	}
	recs := readRecords(t, filepath.Join(dir, "bad.errors.jsonl"))
	if len(recs) != 2 {
		t.Fatalf("%d records; want 2", len(recs))
	}
	if r := recs[0]; r.Datasource != "bad" || r.Reason != "upstream_rejected" || r.Status != 400 || r.Error != "column x is missing" ||
		r.Rows != 3 || r.Bytes != first.Bytes || r.Offset != 0 || r.File != "bad.ndjson" || r.Time.IsZero() {
		t.Errorf("first record %+v", r)
	}
	if r := recs[1]; r.Reason != "queue_max_deliver" || r.Status != 503 || r.Error != "the whole story" ||
		r.Rows != 1 || r.Bytes != len("{\"b\":1}\n") || r.Offset != int64(first.Bytes) {
		t.Errorf("second record %+v; want it at offset %d, with the detail", r, first.Bytes)
	}
	meta, _ := os.ReadFile(filepath.Join(dir, "bad.errors.jsonl"))
	if strings.Contains(string(meta)+string(rows), "secret-client-token") {
		t.Errorf("a dead letter contains the client's token")
	}
	wantMetrics(t, reg, 0, 4)
}

// TestFileNamesAtAnyLength: a datasource name too long for every suffix
// gets shortened files (datafile.Stem), and its record keeps the whole
// name.
func TestFileNamesAtAnyLength(t *testing.T) {
	long := strings.Repeat("l", 255)
	dir := t.TempDir()
	w, reg, _ := newWriter(t, dir)
	if w.Write(batch(buffer.Key{Datasource: long}, "{}\n"), &buffer.Failure{Status: 400, Reason: "upstream_rejected", Message: "no"}) == "" {
		t.Fatal("the dead letter of a 255-byte datasource was not written")
	}
	wantMetrics(t, reg, 0, 1)
	recs := readRecords(t, filepath.Join(dir, datafile.Stem(long)+".errors.jsonl"))
	if len(recs) != 1 || recs[0].Datasource != long || recs[0].File != datafile.Stem(long)+".ndjson" {
		t.Errorf("records %+v; want one with the whole name and the shortened file", recs)
	}
}

// TestWriteFailureIsCountedAndLogged: a dead letter that cannot be written
// is counted and logged, and the caller is told no file.
func TestWriteFailureIsCountedAndLogged(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "blocked.ndjson"), 0o755); err != nil {
		t.Fatal(err)
	}
	w, reg, logs := newWriter(t, dir)
	if got := w.Write(batch(buffer.Key{Datasource: "blocked"}, "{}\n{}\n"), &buffer.Failure{Status: 400}); got != "" {
		t.Errorf("Write returned %q; want \"\" after a failure", got)
	}
	wantMetrics(t, reg, 1, 0)
	if !strings.Contains(logs.String(), "cannot write dead letter") || !strings.Contains(logs.String(), "datasource=blocked events=2") {
		t.Errorf("log %q; want the failure, its datasource and its events", logs.String())
	}
}

// TestOffWritesNothing: without a directory, and as a zero value, a Writer
// writes and counts nothing, but its metrics are exported at zero.
func TestOffWritesNothing(t *testing.T) {
	w, reg, _ := newWriter(t, "")
	var zero Writer
	for _, w := range []*Writer{w, &zero} {
		if got := w.Write(batch(buffer.Key{Datasource: "ds"}, "{}\n"), &buffer.Failure{Status: 400}); got != "" || w.Dir() != "" {
			t.Errorf("Write returned %q, Dir %q; want both empty", got, w.Dir())
		}
	}
	wantMetrics(t, reg, 0, 0)
}

// TestNewCreatesTheDirectory: the directory is created, and one that
// cannot be is an error.
func TestNewCreatesTheDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	w, _, _ := newWriter(t, dir)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() || w.Dir() != dir {
		t.Errorf("stat %s: %v; Dir %q", dir, err, w.Dir())
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(filepath.Join(file, "sub"), prometheus.NewRegistry(), slog.New(slog.DiscardHandler)); err == nil || !strings.HasPrefix(err.Error(), "dead-letter directory: ") {
		t.Errorf("New under a file: got %v; want a dead-letter directory error", err)
	}
}
