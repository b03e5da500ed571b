package main

import (
	"context"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/queue"
)

// sharedQueue is the JetStream queue (QUEUE_URL) and its bridge goroutine;
// a nil *sharedQueue is off and its methods do nothing.
type sharedQueue struct {
	q       *queue.Queue
	stop    context.CancelFunc
	stopped chan error
}

// openQueue connects to NATS and creates the stream and consumer; nil, nil
// when QUEUE_URL is unset. Messages the queue gives up on go to dead.
func openQueue(cfg config.Config, buf *buffer.Buffer, dead *deadletter.Writer, reg prometheus.Registerer, log *slog.Logger) (*sharedQueue, error) {
	urls, ok := cfg.QueueURLs()
	if !ok {
		return nil, nil
	}
	q, err := queue.Open(buf, queue.Options{
		URLs:         strings.Join(urls, ","),
		Stream:       cfg.QueueStream,
		Subject:      cfg.QueueSubject,
		Replicas:     cfg.QueueReplicas,
		MaxBytes:     int64(cfg.QueueMaxBytes),
		MaxAge:       cfg.QueueMaxAge,
		AckWait:      cfg.QueueAckWait,
		MaxDeliver:   cfg.QueueMaxDeliver,
		Creds:        cfg.QueueCreds,
		TLSCA:        cfg.QueueTLSCA,
		WaitTimeout:  cfg.WaitTimeout,
		ClientTokens: cfg.ClientTokensUpstream(),
		MaxBodyBytes: int(cfg.MaxBodyBytes),
		DeadLetter:   dead.WriteRows,
	}, reg, log)
	if err != nil {
		return nil, err
	}
	return &sharedQueue{q: q}, nil
}

// start runs the bridge from the stream into the buffer.
func (s *sharedQueue) start() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop, s.stopped = cancel, make(chan error, 1)
	go func() { s.stopped <- s.q.Run(ctx) }()
}

// stopTaking refuses new writes and stops fetching; call it before the
// buffer closes. What the buffer holds is still acked as the flusher drains.
func (s *sharedQueue) stopTaking() {
	if s == nil {
		return
	}
	s.q.CloseWrites()
	s.stop()
	<-s.stopped
}

// close naks what was not delivered and closes the connection; call it
// after the flusher's Run returned.
func (s *sharedQueue) close(log *slog.Logger) {
	if s == nil {
		return
	}
	if err := s.q.Close(); err != nil {
		log.Warn("closing the NATS connection", "err", err)
	}
}
