package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/tbproxy/tbproxy/config"
)

// checkWritableDirs checks, before anything is opened, that every
// directory the configuration writes to can be written by this process:
// SPOOL_DIR, DEAD_LETTER_DIR and the file sink's. A directory that exists
// but is not writable would otherwise be found out late: the dead-letter
// writer and the file sink only create their directory at start-up, and
// would drop batches at the first write. Each is created as its package
// creates it, with the same mode.
func checkWritableDirs(cfg config.Config) error {
	type dir struct {
		name, value, path string
		perm              fs.FileMode
	}
	var dirs []dir
	if cfg.SpoolDir != "" {
		dirs = append(dirs, dir{"SPOOL_DIR", cfg.SpoolDir, cfg.SpoolDir, 0o700}) // as spool.Open
	}
	if cfg.DeadLetterDir != "" {
		dirs = append(dirs, dir{"DEAD_LETTER_DIR", cfg.DeadLetterDir, cfg.DeadLetterDir, 0o750}) // as deadletter.New
	}
	if path, ok := cfg.FileSinkDir(); ok {
		dirs = append(dirs, dir{"TINYBIRD_BASE_URL", cfg.TinybirdBaseURL, path, 0o755}) // as filesink.New
	}
	for _, d := range dirs {
		if err := checkWritableDir(d.name, d.value, d.path, d.perm); err != nil {
			return err
		}
	}
	return nil
}

// checkWritableDir creates dir with perm if it is missing, and creates and
// removes a file in it. Its error names the variable, its value (name=value)
// and, if they differ, the directory, and the user the process runs as:
// "SPOOL_DIR=/x: directory is not writable by uid 65532 gid 65532:
// permission denied".
func checkWritableDir(name, value, dir string, perm fs.FileMode) error {
	what := name + "=" + value + ": directory"
	if dir != value {
		what += " " + dir
	}
	who := fmt.Sprintf("uid %d gid %d", os.Getuid(), os.Getgid())
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", what)
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return fmt.Errorf("%s does not exist and cannot be created by %s: %w", what, who, err)
	}
	f, err := os.CreateTemp(dir, ".tbproxy-write-check-*")
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is the temporary file's, which was not made
		}
		return fmt.Errorf("%s is not writable by %s: %w", what, who, err)
	}
	tmp := f.Name()
	cerr := f.Close()
	if err := os.Remove(tmp); err != nil {
		return fmt.Errorf("%s: cannot remove %s: %w", what, tmp, err)
	}
	if cerr != nil {
		return fmt.Errorf("%s is not writable by %s: %w", what, who, cerr)
	}
	return nil
}
