// Package logthrottle keeps repeated warnings from flooding the log: a
// slog.Handler that passes at most Burst warnings with the same message per
// Window, and tells, on the next one it passes, how many it held back.
//
// Only warn-level records are throttled. Errors mark events that were
// dropped, and each of those keeps its one log line; debug and info records
// are not repeated under load.
package logthrottle

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Handler throttles warn-level records by message. Safe for concurrent use;
// handlers derived with WithAttrs or WithGroup share one throttle.
type Handler struct {
	next   slog.Handler
	window time.Duration
	burst  int
	st     *state
}

type state struct {
	mu sync.Mutex        // protects m
	m  map[string]*entry // by message; messages are constants, so bounded
}

type entry struct {
	start      time.Time
	passed     int
	suppressed int
}

// New wraps next. A zero window or burst turns throttling off.
func New(next slog.Handler, window time.Duration, burst int) *Handler {
	return &Handler{next: next, window: window, burst: burst, st: &state{m: make(map[string]*entry)}}
}

// Enabled reports whether next handles records at level l.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle passes r on, unless it is one warning too many for its message in
// the current window.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level != slog.LevelWarn || h.window <= 0 || h.burst <= 0 {
		return h.next.Handle(ctx, r)
	}
	now := r.Time
	if now.IsZero() {
		now = time.Now()
	}
	h.st.mu.Lock()
	e := h.st.m[r.Message]
	if e == nil {
		e = &entry{start: now}
		h.st.m[r.Message] = e
	}
	if now.Sub(e.start) >= h.window {
		held := e.suppressed
		*e = entry{start: now, passed: 1}
		h.st.mu.Unlock()
		if held > 0 {
			r = r.Clone()
			r.AddAttrs(slog.Int("suppressed", held))
		}
		return h.next.Handle(ctx, r)
	}
	if e.passed < h.burst {
		e.passed++
		h.st.mu.Unlock()
		return h.next.Handle(ctx, r)
	}
	e.suppressed++
	h.st.mu.Unlock()
	return nil
}

// WithAttrs returns a Handler whose records carry attrs, sharing the throttle.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	return &c
}

// WithGroup returns a Handler that groups attributes, sharing the throttle.
func (h *Handler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}
