package proxy

import (
	"bytes"
	"fmt"

	json "github.com/goccy/go-json"
)

// lineError names the first line of a body that is not a JSON object.
type lineError struct {
	line   int // 1-based, counting every line of the decoded body
	reason string
}

func (e *lineError) Error() string {
	return fmt.Sprintf("line %d: %s; no rows from this request were accepted", e.line, e.reason)
}

// splitLines appends to dst the events of an NDJSON body and returns it.
// Lines end in "\n" or "\r\n"; the last may lack its terminator. Blank lines
// (only spaces, tabs or CRs) are skipped. Every other line must be one JSON
// object, else splitLines returns the first bad line's number and dst holds
// garbage. The returned lines alias body: no byte is copied or rewritten, so
// events reach upstream byte-identical, less the CR of a CRLF.
func splitLines(dst [][]byte, body []byte) ([][]byte, *lineError) {
	for n := 1; len(body) > 0; n++ {
		var line []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			line, body = body, nil
		}
		if k := len(line); k > 0 && line[k-1] == '\r' {
			line = line[:k-1]
		}
		first := firstNonSpace(line)
		if first < 0 {
			continue
		}
		if line[first] != '{' {
			return dst, &lineError{line: n, reason: "not a JSON object"}
		}
		if !validJSON(line) {
			return dst, &lineError{line: n, reason: "invalid JSON"}
		}
		dst = append(dst, line)
	}
	return dst, nil
}

// firstNonSpace returns the index of the first byte that is not JSON
// whitespace, or -1 if there is none.
func firstNonSpace(b []byte) int {
	for i, c := range b {
		switch c {
		case ' ', '\t', '\r':
		default:
			return i
		}
	}
	return -1
}

// validJSON reports whether b is exactly one valid JSON value, surrounding
// whitespace allowed.
func validJSON(b []byte) bool { return json.Valid(b) }
