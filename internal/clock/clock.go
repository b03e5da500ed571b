// Package clock is how this module waits out a delay: the one place a
// sleep is written, so that every sleep ends when its context does.
package clock

import (
	"context"
	"time"
)

// Sleep blocks for d, or until ctx ends if that comes first, and reports
// whether it slept the whole d: false means ctx ended. When both happen at
// once, either answer may come.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
