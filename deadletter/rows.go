package deadletter

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/tbproxy/tbproxy/internal/ndjson"
)

// CheckFile reads file through and returns how many rows it holds, or an
// error naming the first line that is longer than maxLine or not one JSON
// object. Blank lines are skipped, as in a request. tbproxy replay checks
// the whole file before it sends anything: a replay that stopped half way on
// a bad line could not be rerun without duplicating what it had sent.
func CheckFile(file string, maxLine int) (int, error) {
	rows := 0
	err := eachRow(file, maxLine, func(n int, line []byte) error {
		if !ndjson.Object(line) {
			return fmt.Errorf("%s line %d is not a JSON object", file, n)
		}
		rows++
		return nil
	})
	return rows, err
}

// eachRow calls fn with every non-blank line of file, numbered from 1, in
// a buffer fn must not keep; lines longer than maxLine are an error.
func eachRow(file string, maxLine int, fn func(n int, line []byte) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxLine+1)
	n := 0
	for sc.Scan() {
		n++
		if line := sc.Bytes(); len(bytes.TrimSpace(line)) > 0 {
			if len(line) > maxLine {
				return fmt.Errorf("%s line %d is longer than MAX_BODY_BYTES (%d bytes)", file, n, maxLine)
			}
			if err := fn(n, line); err != nil {
				return err
			}
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return fmt.Errorf("%s line %d is longer than MAX_BODY_BYTES (%d bytes)", file, n+1, maxLine)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return nil
}
