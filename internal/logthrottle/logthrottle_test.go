package logthrottle

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestThrottlesRepeatedWarnings(t *testing.T) {
	var out bytes.Buffer
	h := New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}), time.Minute, 3)
	log := slog.New(h)
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	emit := func(at time.Time, level slog.Level, msg string) {
		r := slog.NewRecord(at, level, msg, 0)
		if err := log.Handler().Handle(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		emit(t0.Add(time.Duration(i)*time.Millisecond), slog.LevelWarn, "upstream send failed")
		emit(t0.Add(time.Duration(i)*time.Millisecond), slog.LevelError, "batch dropped")
	}
	emit(t0, slog.LevelWarn, "another warning")
	emit(t0.Add(2*time.Minute), slog.LevelWarn, "upstream send failed")

	got := out.String()
	if n := strings.Count(got, `msg="upstream send failed"`); n != 4 {
		t.Errorf("got %d 'upstream send failed' lines; want 3 in the window and 1 after it", n)
	}
	if !strings.Contains(got, "suppressed=97") {
		t.Errorf("the line after the window does not say 97 were held back:\n%s", got)
	}
	if n := strings.Count(got, `msg="batch dropped"`); n != 100 {
		t.Errorf("got %d error lines; want all 100 (errors are never throttled)", n)
	}
	if !strings.Contains(got, `msg="another warning"`) {
		t.Errorf("a different message was throttled too")
	}
}
