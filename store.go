package main

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/deadletter"
	"github.com/tbproxy/tbproxy/limits"
	"github.com/tbproxy/tbproxy/proxy"
	"github.com/tbproxy/tbproxy/queue"
	"github.com/tbproxy/tbproxy/spool"
	"golang.org/x/sync/errgroup"
)

// store is the durable store accepted requests are written to before the
// buffer, if one is configured: the spool (SPOOL_DIR) or the JetStream
// queue replicas share (QUEUE_URL); config allows one at most. A part that
// is not configured is nil, and every method leaves it out, so main calls
// each of them whatever is configured.
type store struct {
	spool *spool.Spool
	queue *queue.Queue

	stopBridge context.CancelFunc // ends the queue's bridge; set by start
	bridge     errgroup.Group     // the queue's bridge
	stopShare  context.CancelFunc // ends sharing rate limits; set by shareLimits
}

// openStore opens the configured store, or returns an empty one. An error
// is logged here, naming the store that could not be opened.
func openStore(cfg config.Config, buf *buffer.Buffer, dead *deadletter.Writer, reg prometheus.Registerer, log *slog.Logger) (*store, error) {
	var st store
	var err error
	if cfg.SpoolDir != "" {
		if st.spool, err = openSpool(cfg, buf, reg, log); err != nil {
			log.Error("cannot open the spool", "dir", cfg.SpoolDir, "err", err)
			return nil, err
		}
	}
	if urls, ok := cfg.QueueURLs(); ok { // QUEUE_URL="," names no server
		if st.queue, err = openQueue(cfg, urls, buf, dead, reg, log); err != nil {
			log.Error("cannot open the queue", "err", err)
			return nil, err
		}
	}
	return &st, nil
}

func openSpool(cfg config.Config, buf *buffer.Buffer, reg prometheus.Registerer, log *slog.Logger) (*spool.Spool, error) {
	mode, err := spool.ParseFsync(cfg.SpoolFsync)
	if err != nil {
		return nil, err
	}
	return spool.Open(buf, spool.Options{
		Dir:           cfg.SpoolDir,
		SegmentBytes:  int64(cfg.SpoolSegmentBytes),
		MaxBytes:      int64(cfg.SpoolMaxBytes),
		Fsync:         mode,
		FsyncInterval: cfg.SpoolFsyncInterval,
		MaxStreams:    cfg.MaxDatasources,
		HighWatermark: cfg.BufferHighWatermark,
	}, reg, log)
}

// openQueue connects to NATS and creates the stream and consumer. Messages
// the queue gives up on go to dead.
func openQueue(cfg config.Config, urls []string, buf *buffer.Buffer, dead *deadletter.Writer, reg prometheus.Registerer, log *slog.Logger) (*queue.Queue, error) {
	return queue.Open(buf, queue.Options{
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
		Duplicates:   cfg.IdempotencyWindow,
	}, reg, log)
}

// serveInto makes the server write accepted requests to the store instead
// of the buffer. /ready then follows the store rather than the buffer's
// fill, which says nothing about whether it can take writes: the spool's
// fill of SPOOL_MAX_BYTES (it accepts onto disk while the buffer is full),
// or the NATS connection (the buffer holds what this replica fetched to
// deliver).
func (s *store) serveInto(o *proxy.Options) {
	if s.spool != nil {
		o.Store = s.spool
		o.Ready = append(o.Ready, s.spool.Ready)
		o.IgnoreBufferFill = true
	}
	if s.queue != nil {
		o.Store = s.queue
		o.Ready = append(o.Ready, s.queue.Ready)
		o.IgnoreBufferFill = true
	}
}

// replay queues what the spool holds from an earlier run ahead of every
// new request; the spool feeds it to the buffer as the flusher makes room,
// while the server already serves. Call it before the server starts.
func (s *store) replay(log *slog.Logger) {
	if s.spool != nil {
		log.Info("spool recovered; replaying as the buffer has room", "events", s.spool.Recover())
	}
}

// start runs the queue's bridge from the stream into the buffer until
// stopTaking.
func (s *store) start() {
	if s.queue != nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.stopBridge = cancel
		s.bridge.Go(func() error { return s.queue.Run(ctx) })
	}
}

// stopTaking refuses new writes to the store; call it before the buffer
// closes. The queue stops its bridge, waiting for it: what the buffer holds
// is still acked as the flusher drains. The spool feeds its backlog on disk
// to the buffer for up to timeout while the flusher still delivers, so a
// shutdown with upstream up leaves nothing behind; what is left then stays
// on disk for the next start.
func (s *store) stopTaking(timeout time.Duration, log *slog.Logger) {
	if s.spool != nil {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if events, err := s.spool.CloseWrites(ctx); err != nil {
			log.Warn("spool backlog not fed before SHUTDOWN_TIMEOUT; it stays on disk for the next start", "events", events)
		}
	}
	if s.queue != nil {
		s.queue.CloseWrites()
		s.stopBridge()
		_ = s.bridge.Wait() // nil: the bridge logs and retries its own failures
	}
}

// shareLimits makes l's limits one limit across the replicas sharing the
// queue; without a queue (or limits) each process counts alone.
func (s *store) shareLimits(l *limits.Limiter, log *slog.Logger) error {
	if s.queue == nil || l == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopShare = cancel
	return shareLimits(ctx, l, s.queue, log)
}

// close naks what the queue was not told is done and closes its
// connection, and closes the spool; call it after the flusher's Run
// returned.
func (s *store) close(log *slog.Logger) {
	if s.stopShare != nil {
		s.stopShare()
	}
	if s.queue != nil {
		if err := s.queue.Close(); err != nil {
			log.Warn("closing the NATS connection", "err", err)
		}
	}
	if s.spool != nil {
		if err := s.spool.Close(); err != nil {
			log.Error("closing the spool", "err", err)
		}
	}
}
