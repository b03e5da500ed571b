// Package filesink is an upstream that appends each batch to a file per
// datasource in a local directory.
package filesink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/tbproxy/tbproxy/internal/datafile"
	"github.com/tbproxy/tbproxy/upstream"
)

// Sink appends each batch to <dir>/<datasource>.ndjson. It lets a
// newcomer watch events land without a Tinybird account, and gives tests and
// load runs an upstream that cannot fail. Safe for concurrent use.
type Sink struct {
	dir string
	mu  sync.Mutex // serialises appends, so batches never interleave in a file
}

// New creates dir if needed and returns a sink writing into it.
func New(dir string) (*Sink, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	return &Sink{dir: dir}, nil
}

// Send appends b to its datasource's file (see datafile.Stem) and syncs
// it. A write error is retried, since a full disk may get room again,
// unless it can never succeed (permanent): then the batch is dropped,
// dead-lettered and counted, rather than retried forever while its
// datasource stalls. The Result's Status is 0: the sink is not HTTP.
func (s *Sink) Send(_ context.Context, b *upstream.Batch) (upstream.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	path := filepath.Join(s.dir, datafile.Stem(b.Key.Datasource)+".ndjson")
	if _, err := datafile.Append(path, func(w io.Writer) error {
		_, err := b.WriteTo(w)
		return err
	}); err != nil {
		err = fmt.Errorf("append %d events to %s: %w", b.Rows, path, err)
		if permanent(err) {
			return upstream.Result{}, err
		}
		return upstream.Result{}, &upstream.RetryableError{Err: err}
	}
	return upstream.Result{SuccessfulRows: b.Rows}, nil
}

// permanent reports whether a file-system error is one no retry can mend:
// the path itself is wrong (too long, a directory, not a directory, a loop
// of links, invalid).
func permanent(err error) bool {
	for _, e := range []error{syscall.ENAMETOOLONG, syscall.EISDIR, syscall.ENOTDIR, syscall.ELOOP, syscall.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
