package main

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func TestBodyIDsAreUniqueAndEventsValid(t *testing.T) {
	b := newBody("0123abcd", 7, 10, time.Now())
	seen := map[string]bool{}
	for range 3 {
		body := b.next()
		lines := bytes.Split(bytes.TrimSuffix(body, []byte("\n")), []byte("\n"))
		if len(lines) != 10 {
			t.Fatalf("got %d lines, want 10", len(lines))
		}
		ids := bytes.Split(bytes.TrimSuffix(b.appendIDs(nil), []byte("\n")), []byte("\n"))
		for i, l := range lines {
			var ev struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(l, &ev); err != nil {
				t.Fatalf("line %d is not valid JSON: %v\n%s", i, err, l)
			}
			if ev.ID != string(ids[i]) {
				t.Fatalf("line %d: id %q, appendIDs gave %q", i, ev.ID, ids[i])
			}
			if seen[ev.ID] {
				t.Fatalf("id %q repeated", ev.ID)
			}
			seen[ev.ID] = true
		}
	}
	if want := "0123abcd-0007-0000000030"; !seen[want] {
		t.Errorf("id %q not produced", want)
	}
}

func TestQuantile(t *testing.T) {
	s := make([]int64, 100)
	for i := range s {
		s[i] = int64(i + 1)
	}
	for _, c := range []struct {
		q    float64
		want int64
	}{{0.5, 50}, {0.9, 90}, {0.99, 99}, {0.999, 100}, {1, 100}, {0, 1}} {
		if got := quantile(s, c.q); got != c.want {
			t.Errorf("quantile(%v) = %d, want %d", c.q, got, c.want)
		}
	}
}
