// Package datafile names and appends to the per-datasource files that the
// file sink and the dead-letter directory keep: one name rule (Stem) and
// one way to append (Append), so both directories read the same.
package datafile

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"

	"github.com/tbproxy/tbproxy/buffer"
)

// MaxStem is the longest stem that leaves room for every suffix a
// datasource's files take (".errors.jsonl" is the longest) within the
// 255-byte file-name limit of Linux file systems.
const MaxStem = 255 - len(".errors.jsonl")

// Stem returns the name a datasource's files take in a directory, the
// file sink's or the dead letters': the datasource itself when it is a
// valid name of at most MaxStem bytes; otherwise its first 200 letters,
// digits and underscores, "-", and 16 hex digits of the SHA-256 of the
// whole name. A datasource name never holds '-', so a shortened stem never
// names another datasource's file, and no byte of a name can leave the
// directory or make a file name the file system refuses.
func Stem(ds string) string {
	if buffer.ValidDatasource(ds) && len(ds) <= MaxStem {
		return ds
	}
	keep := make([]byte, 0, 200+1+16)
	for i := 0; i < len(ds) && len(keep) < 200; i++ {
		if c := ds[i]; c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') {
			keep = append(keep, c)
		}
	}
	sum := sha256.Sum256([]byte(ds))
	keep = append(keep, '-')
	return string(hex.AppendEncode(keep, sum[:8]))
}

// Append appends what write produces to path, syncs it, and returns the
// offset it started at. On error the file is cut back to that offset, so a
// retry leaves no torn line behind. The file is created (mode 0640) if
// needed. Callers that append to one file from several goroutines
// serialise their calls.
func Append(path string, write func(io.Writer) error) (int64, error) {
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
