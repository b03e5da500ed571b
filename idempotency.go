package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/idempotency"
)

// idempotencyStore is the Idempotency-Key store, kept beside the spool's
// segments (SPOOL_DIR) so its window survives a restart as they do.
type idempotencyStore struct{ *idempotency.Store }

// openIdempotency opens the store; nil when IDEMPOTENCY_WINDOW is 0.
func openIdempotency(cfg config.Config, reg prometheus.Registerer, log *slog.Logger) (*idempotencyStore, error) {
	if cfg.IdempotencyWindow <= 0 {
		return nil, nil
	}
	s, err := idempotency.Open(idempotency.Options{
		Window:     cfg.IdempotencyWindow,
		MaxKeys:    cfg.IdempotencyMaxKeys,
		Dir:        cfg.SpoolDir,
		Fsync:      cfg.SpoolFsync == "always",
		Registerer: reg,
		Logger:     log,
	})
	if err != nil {
		return nil, err
	}
	return &idempotencyStore{s}, nil
}

// close writes down what the store holds; after the server stopped.
func (s *idempotencyStore) close(log *slog.Logger) {
	if s == nil {
		return
	}
	if err := s.Close(); err != nil {
		log.Warn("closing the Idempotency-Key store", "err", err)
	}
}
