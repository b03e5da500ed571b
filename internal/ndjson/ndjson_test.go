package ndjson

import (
	"strings"
	"testing"
)

func TestSplit(t *testing.T) {
	f := func(data string, want []string, ok bool) {
		t.Helper()
		got, err := Split(nil, []byte(data))
		if (err == nil) != ok {
			t.Fatalf("Split(%q): error %v; want ok %v", data, err, ok)
		}
		if !ok {
			return
		}
		var s []string
		for _, l := range got {
			s = append(s, string(l))
		}
		if strings.Join(s, "|") != strings.Join(want, "|") {
			t.Errorf("Split(%q) = %q; want %q", data, s, want)
		}
	}
	f("{}\n", []string{"{}"}, true)
	f("{\"a\":1}\n {\"b\":[2]} \n", []string{`{"a":1}`, ` {"b":[2]} `}, true)
	f("", nil, false)
	f("{}", nil, false)            // not terminated
	f("{}\n\n", nil, false)        // a blank line is not an object
	f("{}\n[1]\n", nil, false)     // not an object
	f("{}\n{\"a\":\n", nil, false) // invalid
	f("{} {}\n", nil, false)       // two values
}
