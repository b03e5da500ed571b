package filesink

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/datafile"
	"github.com/tbproxy/tbproxy/upstream"
)

// batch returns a batch for ds holding one part per element of parts, each
// a run of lines.
func batch(ds string, parts ...[]string) *upstream.Batch {
	b := &upstream.Batch{Key: buffer.Key{Datasource: ds}}
	for _, lines := range parts {
		data := strings.Join(lines, "\n") + "\n"
		b.Parts = append(b.Parts, []byte(data))
		b.Rows += len(lines)
		b.Bytes += len(data)
	}
	return b
}

func event(i int) string { return `{"i":` + strings.Repeat("1", i%7+1) + `,"s":"Zürich 東京 🚀"}` }

func TestFileSink(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "events")
	sink, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []*upstream.Batch{
		batch("page_views", []string{event(1), event(2)}, []string{event(3)}),
		batch("clicks", []string{event(4)}),
	} {
		res, err := sink.Send(context.Background(), b)
		// Status 0: the flusher counts the attempt as code "ok", not as an HTTP status.
		if err != nil || res.SuccessfulRows != b.Rows || res.QuarantinedRows != 0 || res.Status != 0 {
			t.Errorf("Send(%s): got %+v, %v; want all %d rows, status 0", b.Key.Datasource, res, err, b.Rows)
		}
	}
	for file, want := range map[string]string{
		"page_views.ndjson": event(1) + "\n" + event(2) + "\n" + event(3) + "\n",
		"clicks.ndjson":     event(4) + "\n",
	} {
		got, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s: got %q; want %q", file, got, want)
		}
	}
}

// TestFileNamesAtAnyLength: every valid datasource name, up to 255 bytes,
// gets a file the file system accepts; a name too long for every suffix is
// shortened (datafile.Stem).
func TestFileNamesAtAnyLength(t *testing.T) {
	fits := strings.Repeat("f", datafile.MaxStem)
	long := strings.Repeat("l", 255)
	longer := strings.Repeat("l", 254) + "m" // differs only past the kept prefix
	dir := filepath.Join(t.TempDir(), "events")
	sink, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ds := range []string{fits, long, longer} {
		if _, err := sink.Send(context.Background(), batch(ds, []string{event(len(ds))})); err != nil {
			t.Fatalf("the file sink did not deliver: %v", err)
		}
	}
	for _, ds := range []string{fits, long, longer} {
		got, err := os.ReadFile(filepath.Join(dir, datafile.Stem(ds)+".ndjson"))
		if err != nil || string(got) != event(len(ds))+"\n" {
			t.Errorf("datasource of %d bytes: got %q, %v", len(ds), got, err)
		}
	}
}

// TestFileSinkPermanentErrorIsFinal: a write that can never succeed (the
// datasource's file is a directory) is a final error, so the flusher drops
// the batch instead of retrying it forever while the buffer fills; other
// datasources are written as usual.
func TestFileSinkPermanentErrorIsFinal(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "blocked.ndjson"), 0o755); err != nil {
		t.Fatal(err)
	}
	sink, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sink.Send(context.Background(), batch("blocked", []string{event(1)}))
	if _, retry := upstream.Retryable(err); err == nil || retry || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("Send to a directory: got %v (retryable %v); want a final error saying it is a directory", err, retry)
	}
	if _, err := sink.Send(context.Background(), batch("fine", []string{event(2)})); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "fine.ndjson")); string(got) != event(2)+"\n" {
		t.Errorf("fine.ndjson = %q", got)
	}
}
