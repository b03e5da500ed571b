package proxy

import (
	"bytes"
	stdjson "encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSplitLines(t *testing.T) {
	f := func(body string, want []string, wantBadLine int) {
		t.Helper()
		got, err := splitLines(nil, []byte(body))
		if wantBadLine > 0 {
			if err == nil || err.line != wantBadLine {
				t.Fatalf("splitLines(%q): got error %v; want one for line %d", body, err, wantBadLine)
			}
			return
		}
		if err != nil {
			t.Fatalf("splitLines(%q): unexpected error %v", body, err)
		}
		if len(got) != len(want) {
			t.Fatalf("splitLines(%q): got %d lines %q; want %q", body, len(got), got, want)
		}
		for i := range want {
			if string(got[i]) != want[i] {
				t.Fatalf("splitLines(%q) line %d: got %q; want %q", body, i, got[i], want[i])
			}
		}
	}
	f("", nil, 0)
	f("\n\r\n \t\n", nil, 0)
	f(`{}`, []string{`{}`}, 0)
	f("{\"a\":1}\n", []string{`{"a":1}`}, 0)
	f("{\"a\":1}\r\n{\"b\":2}", []string{`{"a":1}`, `{"b":2}`}, 0)
	f("  {\"a\":1}  \n", []string{`  {"a":1}  `}, 0)
	f("{\"s\":\"a\\nb\"}", []string{`{"s":"a\nb"}`}, 0)
	f("{\"big\":123456789012345678901234567890}", []string{`{"big":123456789012345678901234567890}`}, 0)
	f("{\"a\":1}\n\n[1]", nil, 3)
	f("1\n", nil, 1)
	f("null", nil, 1)
	f("{\"a\":1}{\"b\":2}", nil, 1)
	f("{\"a\":1,}", nil, 1)
	f("{\"a\":1}\n{", nil, 2)
	f("{\"a\":1}\r{\"b\":2}", nil, 1) // a lone CR does not end a line
}

// reference is a slow, obviously correct model of splitLines.
func reference(body []byte) (lines [][]byte, badLine int) {
	for i, l := range bytes.Split(body, []byte("\n")) {
		l = bytes.TrimSuffix(l, []byte("\r"))
		if len(bytes.Trim(l, " \t\r")) == 0 {
			continue
		}
		trimmed := bytes.TrimLeft(l, " \t\r")
		if trimmed[0] != '{' || !stdjson.Valid(l) {
			return lines, i + 1
		}
		lines = append(lines, l)
	}
	return lines, 0
}

func FuzzSplitLines(f *testing.F) {
	files, _ := filepath.Glob("../testdata/events/*.ndjson")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("{\"a\":1}\r\n\r\n{\"b\":[1,2,{\"c\":null}]}"))
	f.Add([]byte("\n\n  \t\n"))
	f.Add([]byte(`{"no":"final newline"}`))
	f.Add([]byte(`{"long":"` + strings.Repeat("é", 5_000) + `"}`))
	f.Add([]byte("{\"a\":\"\xff\"}\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		orig := bytes.Clone(body)
		got, err := splitLines(nil, body)
		if !bytes.Equal(body, orig) {
			t.Fatalf("splitLines modified its input")
		}
		want, badLine := reference(body)
		if (err != nil) != (badLine != 0) {
			t.Fatalf("got error %v; reference says bad line %d", err, badLine)
		}
		if err != nil {
			if err.line != badLine {
				t.Fatalf("got bad line %d; reference says %d", err.line, badLine)
			}
			return
		}
		for _, l := range got {
			if bytes.IndexByte(l, '\n') >= 0 {
				t.Fatalf("output line %q contains a newline", l)
			}
		}
		if g, w := bytes.Join(got, []byte("\n")), bytes.Join(want, []byte("\n")); !bytes.Equal(g, w) {
			t.Fatalf("got %q; want %q", g, w)
		}
	})
}
