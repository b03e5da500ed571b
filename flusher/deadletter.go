package flusher

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	json "github.com/goccy/go-json"
	"github.com/tbproxy/tbproxy/buffer"
)

// DeadLetter describes one dropped batch: one line of
// <dir>/<datasource>.errors.jsonl. Offset and Bytes locate its rows in
// <dir>/<datasource>.ndjson, so an operator can cut them out and replay them
// (tbproxy replay, or curl).
type DeadLetter struct {
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

// deadLetters appends dropped batches to files in a directory. Tokens are
// never written: replaying a pass-through batch needs its token again.
// Safe for concurrent use.
type deadLetters struct {
	dir string
	mu  sync.Mutex // serialises appends, so batches and their records pair up
}

func newDeadLetters(dir string) (*deadLetters, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("dead-letter directory: %w", err)
	}
	return &deadLetters{dir: dir}, nil
}

// write appends b's rows to <dir>/<datasource>.ndjson, then its record to
// <dir>/<datasource>.errors.jsonl, both synced. It returns the rows' file.
func (d *deadLetters) write(b *Batch, f *buffer.Failure, now time.Time) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	stem := fileStem(b.Key.Datasource)
	rowsPath := filepath.Join(d.dir, stem+".ndjson")
	offset, err := appendTo(rowsPath, func(w io.Writer) error {
		_, err := b.WriteTo(w)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("append %d rows to %s: %w", b.Rows, rowsPath, err)
	}
	rec, err := json.Marshal(DeadLetter{
		Time: now.UTC(), Datasource: b.Key.Datasource, Reason: f.Reason, Status: f.Status,
		Error: cmp.Or(f.Detail, f.Message), Rows: b.Rows, Bytes: b.Bytes, Offset: offset, File: filepath.Base(rowsPath),
	})
	if err != nil {
		return "", err
	}
	metaPath := filepath.Join(d.dir, stem+".errors.jsonl")
	if _, err := appendTo(metaPath, func(w io.Writer) error {
		_, err := w.Write(append(rec, '\n'))
		return err
	}); err != nil {
		return "", fmt.Errorf("append record to %s: %w", metaPath, err)
	}
	return rowsPath, nil
}

// appendTo appends what write produces to path, syncs it, and returns the
// offset it started at. On error the file is cut back to that offset, so a
// retry leaves no torn line behind.
func appendTo(path string, write func(io.Writer) error) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return 0, err
	}
	start, err := f.Seek(0, io.SeekEnd)
	if err == nil {
		w := bufio.NewWriterSize(f, 256<<10)
		err = write(w)
		if err == nil {
			err = w.Flush()
		}
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			_ = f.Truncate(start)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return start, err
}
