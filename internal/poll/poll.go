// Package poll waits in tests for a condition that another goroutine or
// process makes true, checking it often and failing the test after a
// generous deadline, so a loaded machine is slow but never wrong.
package poll

import (
	"testing"
	"time"
)

// Timeout is how long Until waits before it fails the test.
const Timeout = 15 * time.Second

// Until checks cond every few milliseconds until it holds, and fails the
// test, naming what, if it does not within Timeout.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", Timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
