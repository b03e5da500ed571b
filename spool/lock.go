package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockName is the file in the spool directory that one process holds an
// exclusive lock on while it uses the directory.
const lockName = "LOCK"

// lockDir takes an exclusive, non-blocking lock on dir for this process and
// writes its pid into the lock file. Two processes sharing one directory
// (a rolling update on a shared volume) would replay, and delete, each
// other's live segments; the second one is refused instead, naming the
// holder. The lock goes with the returned file, or with the process.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "unknown pid"
		if b, rerr := os.ReadFile(path); rerr == nil && len(strings.TrimSpace(string(b))) > 0 {
			holder = "pid " + strings.TrimSpace(string(b))
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("spool: %s is in use by another process (%s); two processes must never share a SPOOL_DIR", dir, holder)
		}
		return nil, fmt.Errorf("spool: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
