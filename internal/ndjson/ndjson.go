// Package ndjson checks and splits NDJSON that comes back from storage (the
// spool, the JetStream queue, a dead-letter file) before it is buffered
// again. Such data was validated when a client sent it, but the disk or the
// queue may hold what no client sent (a forged message, a record read from
// the middle of another), so it is checked again the same way: each line
// one JSON object. The proxy's own splitter (proxy/ndjson.go) is the hot
// path for client bodies and reports which line is wrong.
package ndjson

import (
	"bytes"
	"errors"
	"fmt"

	json "github.com/goccy/go-json"
)

// ErrNotTerminated reports data whose last line does not end in '\n'.
var ErrNotTerminated = errors.New("ndjson: the last line does not end in a newline")

// Object reports whether line is one JSON object, surrounding whitespace
// allowed.
func Object(line []byte) bool {
	t := bytes.TrimLeft(line, " \t\r")
	return len(t) > 0 && t[0] == '{' && json.Valid(t)
}

// Split appends to dst the lines of data, every one ending in '\n' (which
// the lines leave out), and returns them; the lines alias data. It fails,
// with dst holding garbage, when data is empty or not terminated, or a line
// is not one JSON object.
func Split(dst [][]byte, data []byte) ([][]byte, error) {
	if len(data) == 0 || data[len(data)-1] != '\n' {
		return dst, ErrNotTerminated
	}
	for n := 1; len(data) > 0; n++ {
		i := bytes.IndexByte(data, '\n')
		line := data[:i]
		if !Object(line) {
			return dst, fmt.Errorf("ndjson: line %d is not a JSON object", n)
		}
		dst = append(dst, line)
		data = data[i+1:]
	}
	return dst, nil
}
