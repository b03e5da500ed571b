package flusher

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// FileSink appends each batch to <dir>/<datasource>.ndjson. It lets a
// newcomer watch events land without a Tinybird account, and gives tests and
// load runs an upstream that cannot fail. Safe for concurrent use.
type FileSink struct {
	dir string
	mu  sync.Mutex // serialises appends, so batches never interleave in a file
}

// NewFileSink creates dir if needed and returns a sink writing into it.
func NewFileSink(dir string) (*FileSink, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	return &FileSink{dir: dir}, nil
}

// Send appends b to its datasource's file and syncs it. Datasource names are
// validated by the proxy (letters, digits, underscore), so they are safe file
// names. A write error is retried: a full disk may get room again.
func (s *FileSink) Send(_ context.Context, b *Batch) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	path := filepath.Join(s.dir, b.Key.Datasource+".ndjson")
	if _, err := appendTo(path, func(w io.Writer) error {
		_, err := b.WriteTo(w)
		return err
	}); err != nil {
		return Result{}, &RetryableError{Err: fmt.Errorf("append %d events to %s: %w", b.Rows, path, err)}
	}
	return Result{SuccessfulRows: b.Rows}, nil
}
