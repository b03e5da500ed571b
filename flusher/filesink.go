package flusher

import (
	"bufio"
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
	if err := appendBatch(path, b); err != nil {
		return Result{}, &RetryableError{Err: fmt.Errorf("append %d events to %s: %w", b.Rows, path, err)}
	}
	return Result{SuccessfulRows: b.Rows}, nil
}

func appendBatch(path string, b *Batch) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	start, err := f.Seek(0, io.SeekEnd)
	if err == nil {
		w := bufio.NewWriterSize(f, 256<<10)
		_, err = b.WriteTo(w)
		if err == nil {
			err = w.Flush()
		}
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			// Cut a half-written batch off, so the retry does not leave a
			// torn line or a partial copy behind.
			_ = f.Truncate(start)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
