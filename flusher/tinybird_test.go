package flusher

import (
	"testing"
	"time"
)

// TestTinybirdDefaults: a timeout and connection count an operator sets
// are used as given; unset ones get the documented defaults.
func TestTinybirdDefaults(t *testing.T) {
	for _, tc := range []struct {
		in, want TinybirdOptions
	}{
		{TinybirdOptions{}, TinybirdOptions{Timeout: 30 * time.Second, MaxConns: 16}},
		{TinybirdOptions{Timeout: 2 * time.Second, MaxConns: 3}, TinybirdOptions{Timeout: 2 * time.Second, MaxConns: 3}},
	} {
		tc.in.BaseURL = "http://127.0.0.1:1"
		up, err := NewTinybird(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if up.opts.Timeout != tc.want.Timeout || up.client.MaxConnsPerHost != tc.want.MaxConns || up.client.MaxConnWaitTimeout != tc.want.Timeout {
			t.Errorf("%+v: timeout %s, %d connections; want %s, %d", tc.in, up.opts.Timeout, up.client.MaxConnsPerHost, tc.want.Timeout, tc.want.MaxConns)
		}
	}
}
