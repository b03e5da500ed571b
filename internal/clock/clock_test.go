package clock

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Sleep(t.Context(), time.Minute) {
			t.Fatal("got false; want true: the context did not end")
		}
		if got := time.Since(start); got != time.Minute {
			t.Errorf("slept %s; want 1m0s", got)
		}

		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start = time.Now()
		if Sleep(ctx, time.Hour) {
			t.Fatal("got true; want false: the context ended first")
		}
		if got := time.Since(start); got != time.Second {
			t.Errorf("slept %s; want 1s, until the context ended", got)
		}

		if Sleep(ctx, time.Hour) {
			t.Error("got true with a context already ended; want false")
		}
	})
}
