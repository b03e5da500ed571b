package spool

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// retiredName is the file in the spool directory that lists, one number a
// line, segments every record of which is done but whose file could not be
// deleted (an immutable flag, a read-only remount): a restart deletes them,
// or skips them if it cannot, and never replays them.
const retiredName = "retired"

// readRetired returns the segment numbers the retired file lists; an
// unreadable file lists none (logged).
func readRetired(dir string, log *slog.Logger) map[uint64]bool {
	out := map[uint64]bool{}
	b, err := os.ReadFile(filepath.Join(dir, retiredName))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Error("cannot read the spool's list of retired segments", "err", err)
		}
		return out
	}
	for line := range strings.Lines(string(b)) {
		if seq, err := strconv.ParseUint(strings.TrimSpace(line), 10, 64); err == nil {
			out[seq] = true
		}
	}
	return out
}

// noteRetired appends seq to the retired file, synced.
func noteRetired(dir string, seq uint64) error {
	f, err := os.OpenFile(filepath.Join(dir, retiredName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strconv.FormatUint(seq, 10) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeRetired replaces the retired file with the segments still on disk,
// or removes it when there are none.
func writeRetired(dir string, segs []*segment) error {
	path := filepath.Join(dir, retiredName)
	if len(segs) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	var b []byte
	for _, seg := range segs {
		b = strconv.AppendUint(b, seg.seq, 10)
		b = append(b, '\n')
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
