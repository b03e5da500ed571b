// Package queue puts every accepted request on a NATS JetStream stream
// shared by all replicas, and feeds each replica's buffer from the stream's
// one durable pull consumer, so an acknowledged event survives the loss of
// any single replica (issue #8).
//
// The accept path (PutWaiting) publishes the requests that arrive together
// as one message (group commit, commit.go) and returns only once JetStream
// acknowledged storing it. The bridge (Run) fetches messages while the local
// buffer has room, checks each request of a message on its own and puts it
// in the buffer with a Waiter (requests of one key with no waiting client
// share an entry); the flusher batches and delivers as usual, and once the
// Waiters of all a message's entries are done the message is acked
// (delivered, or dropped with a reason), or as soon as one is handed back
// it is naked (this replica shut down first: another replica gets it). A
// replica that dies leaves its messages unacked, and JetStream redelivers
// them after the consumer's ack wait: delivery is at-least-once.
package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/clock"
	"github.com/tbproxy/tbproxy/internal/redact"
)

// Headers of a single-request message (see group.go for the formats). The
// body is the request's NDJSON lines, each ending in '\n'.
const (
	hdrDatasource = "Tbproxy-Datasource"
	hdrRows       = "Tbproxy-Rows"
	// hdrToken is the client's token, in pass-through mode only: the stream
	// then holds client tokens (see docs/replicas.md).
	hdrToken = "Tbproxy-Token"
	// hdrReply is "<process id>.<request id>" for a wait=true request: the
	// replica that delivers it publishes the outcome on <subject>.done.<process id>.
	hdrReply = "Tbproxy-Reply"
)

// messageOverhead is room kept in a message for its headers, and in a
// group for a record's fixed part, datasource and reply (all but the
// token, which is counted as it comes).
const messageOverhead = 1024

// Options configure a Queue. Zero values are replaced by the defaults noted.
type Options struct {
	// URLs are the NATS servers, comma-separated (nats://h1:4222,nats://h2:4222).
	URLs string
	// Stream is the JetStream stream's name (default TBPROXY).
	Stream string
	// Subject prefixes every subject: requests go to <Subject>.<datasource>,
	// wait=true outcomes to <Subject>.done.<process id> (default tbproxy.events).
	Subject string
	// Replicas is the stream's replication factor (default 1; 3 in a cluster).
	Replicas int
	// MaxBytes and MaxAge bound the stream; at MaxBytes new publishes are
	// refused (buffer.ErrFull, 429). Defaults 4 GiB and 168h.
	MaxBytes int64
	MaxAge   time.Duration
	// AckWait is how long a fetched message may go without an ack or a
	// progress report before JetStream redelivers it (default 30s).
	AckWait time.Duration
	// MaxDeliver is how many times a message is delivered before it is
	// dead-lettered with reason max_deliver (default 10).
	MaxDeliver int
	// Consumer is the durable pull consumer's name (default tbproxy-flusher).
	Consumer string
	// Creds is a NATS .creds file, TLSCA a PEM file of CAs to trust; both
	// optional.
	Creds, TLSCA string
	// PublishTimeout bounds the wait for a PubAck (default 5s); beyond it the
	// client gets 503.
	PublishTimeout time.Duration
	// WaitTimeout is the proxy's WAIT_TIMEOUT: a wait=true request's entry
	// is forgotten a little after it (default 10s).
	WaitTimeout time.Duration
	// SetupTimeout bounds connecting and creating the stream and consumer
	// at Open (default 15s).
	SetupTimeout time.Duration
	// MaxBodyBytes is the proxy's MAX_BODY_BYTES: Open warns when the
	// server's max_payload cannot carry a request that large.
	MaxBodyBytes int
	// ClientTokens says requests carry the client's own token (pass-through
	// mode). A message read from the stream must then carry one, else none:
	// the proxy never publishes anything else.
	ClientTokens bool
	// DeadLetter, when set, writes a dead-lettered request's rows where the
	// flusher writes its dead letters (DEAD_LETTER_DIR) and returns the file.
	DeadLetter func(key buffer.Key, data []byte, rows int, f *buffer.Failure) string
	// NoGroupCommit publishes every request as a message of its own, in the
	// single-request format, as versions before group commit did: their
	// bridges cannot read group messages (docs/replicas.md, upgrading). It
	// is also the baseline of BenchmarkPutWaitingGroupCommit.
	NoGroupCommit bool
	// Duplicates is the stream's duplicate window (IDEMPOTENCY_WINDOW): a
	// request published again with the same Nats-Msg-Id within it is not
	// stored again (PutIdempotent). 0 leaves JetStream's default (2m); it
	// is capped at MaxAge, as JetStream requires.
	Duplicates time.Duration
}

func (o *Options) setDefaults() {
	if o.Stream == "" {
		o.Stream = "TBPROXY"
	}
	if o.Subject == "" {
		o.Subject = "tbproxy.events"
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 4 << 30
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 168 * time.Hour
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.MaxDeliver <= 0 {
		o.MaxDeliver = 10
	}
	if o.Consumer == "" {
		o.Consumer = "tbproxy-flusher"
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 5 * time.Second
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = 10 * time.Second
	}
	if o.SetupTimeout <= 0 {
		o.SetupTimeout = 15 * time.Second
	}
}

// maxAckPending bounds the messages fetched and not yet acked, across all
// replicas. It is large so a replica can hold a full buffer of one-event
// requests; each replica's buffer is the real bound.
const maxAckPending = 1_000_000

// Queue is the JetStream queue in front of a buffer. Create one with Open;
// run the bridge with Run; stop with CloseWrites, then Close once the
// flusher has drained. Safe for concurrent use.
type Queue struct {
	buf  *buffer.Buffer
	opts Options
	log  *slog.Logger
	m    *metrics

	nc   *nats.Conn
	js   jetstream.JetStream
	cons jetstream.Consumer

	procID string // this process, in hdrReply
	waits  waits
	held   held

	// Group commit (commit.go): PutWaiting queues requests on in, the
	// committer publishes groups of them and hands each to the answerer on
	// sent. slots holds a token per group awaiting its PubAck.
	in         chan *pending
	sent       chan *group
	slots      chan struct{}
	committing sync.WaitGroup // the committer and the answerer
	pendings   sync.Pool      // of *pending
	groups     sync.Pool      // of *group, with their bodies
	// gate is held for reading while a request enters in, and for writing
	// to close in: no request is queued after the committer's last look.
	gate     sync.RWMutex
	inClosed bool // protected by gate

	closed atomic.Bool // CloseWrites was called
	bg     sync.WaitGroup
	stopBG context.CancelFunc
}

// Open connects to NATS, creates the stream and the durable consumer if
// missing (or updates them to opts), and subscribes to this process's
// wait=true outcomes. It gives up after SetupTimeout. Metrics are registered
// on reg.
func Open(buf *buffer.Buffer, opts Options, reg prometheus.Registerer, log *slog.Logger) (*Queue, error) {
	opts.setDefaults()
	var id [8]byte
	_, _ = rand.Read(id[:])
	q := &Queue{buf: buf, opts: opts, log: log, procID: hex.EncodeToString(id[:])}
	q.waits.m = make(map[string]*waiting)
	q.held.m = make(map[jetstream.Msg]time.Time)
	m, err := newMetrics(reg, func() float64 { return float64(q.held.len()) })
	if err != nil {
		return nil, fmt.Errorf("queue: register metrics: %w", err)
	}
	q.m = m

	nopts := []nats.Option{
		nats.Name("tbproxy"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		// Publishes while disconnected fail at once (503) instead of
		// waiting in a client-side buffer that a crash would lose.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			q.m.connected.Set(0)
			log.Warn("disconnected from NATS", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			q.m.connected.Set(1)
			log.Info("reconnected to NATS", "server", redact.URL(nc.ConnectedUrlRedacted()))
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			q.m.connected.Set(1)
			log.Info("connected to NATS", "server", redact.URL(nc.ConnectedUrlRedacted()))
		}),
	}
	if opts.Creds != "" {
		nopts = append(nopts, nats.UserCredentials(opts.Creds))
	}
	if opts.TLSCA != "" {
		nopts = append(nopts, nats.RootCAs(opts.TLSCA))
	}
	nc, err := nats.Connect(opts.URLs, nopts...)
	if err != nil {
		return nil, fmt.Errorf("queue: connect to NATS: %w", err)
	}
	q.nc = nc
	if nc.IsConnected() {
		q.m.connected.Set(1)
	}
	// The committer keeps its groups in flight under this bound, so it never
	// stalls in PublishMsgAsync; one message per request pipelines more.
	maxPending := groupsInFlight
	if opts.NoGroupCommit {
		maxPending = 8192
	}
	q.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending), jetstream.WithPublishAsyncTimeout(opts.PublishTimeout))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := q.setup(); err != nil {
		nc.Close()
		return nil, err
	}
	if mp := nc.MaxPayload(); opts.MaxBodyBytes > 0 && int64(opts.MaxBodyBytes)+messageOverhead > mp {
		log.Warn("nats-server's max_payload is below MAX_BODY_BYTES: larger requests will get 413; raise max_payload in the server's configuration (up to 64MB) or lower MAX_BODY_BYTES",
			"max_payload", mp, "max_body_bytes", opts.MaxBodyBytes)
	}
	if !opts.NoGroupCommit {
		q.in = make(chan *pending, commitQueue)
		q.sent = make(chan *group, groupsInFlight)
		q.slots = make(chan struct{}, groupsInFlight)
		q.committing.Go(q.commit)
		q.committing.Go(q.answer)
	}
	ctx, cancel := context.WithCancel(context.Background())
	q.stopBG = cancel
	q.bg.Go(func() { q.housekeeping(ctx) })
	return q, nil
}

// setup creates or updates the stream and the consumer, retrying until
// SetupTimeout (the servers may still be electing a leader), and subscribes
// to wait=true outcomes.
func (q *Queue) setup() error {
	ctx, cancel := context.WithTimeout(context.Background(), q.opts.SetupTimeout)
	defer cancel()
	scfg := jetstream.StreamConfig{
		Name:     q.opts.Stream,
		Subjects: []string{q.opts.Subject + ".*"},
		// Work queue: an acked message is deleted, so MaxBytes bounds the
		// backlog, not the history.
		Retention: jetstream.WorkQueuePolicy,
		Discard:   jetstream.DiscardNew,
		Storage:   jetstream.FileStorage,
		Replicas:  q.opts.Replicas,
		MaxBytes:  q.opts.MaxBytes,
		MaxAge:    q.opts.MaxAge,
		// PutIdempotent's window: one replica's repeat of another's request.
		Duplicates: min(q.opts.Duplicates, q.opts.MaxAge),
	}
	ccfg := jetstream.ConsumerConfig{
		Durable:   q.opts.Consumer,
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   q.opts.AckWait,
		// Unlimited here: the bridge dead-letters a message on its
		// MaxDeliver-th delivery. Were JetStream to stop at the same count,
		// a replica dying while it held that delivery would leave the
		// message in the stream, never delivered and never dead-lettered.
		MaxDeliver:    -1,
		MaxAckPending: maxAckPending,
		FilterSubject: q.opts.Subject + ".*",
	}
	var err error
	for attempt := 0; ; attempt++ {
		if _, err = q.js.CreateOrUpdateStream(ctx, scfg); err == nil {
			if q.cons, err = q.js.CreateOrUpdateConsumer(ctx, q.opts.Stream, ccfg); err == nil {
				break
			}
		}
		if !clock.Sleep(ctx, min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)) {
			return fmt.Errorf("queue: create stream %s and consumer %s: %w", q.opts.Stream, q.opts.Consumer, err)
		}
	}
	if _, err := q.nc.Subscribe(q.opts.Subject+".done."+q.procID, q.onOutcome); err != nil {
		return fmt.Errorf("queue: subscribe to wait outcomes: %w", err)
	}
	return nil
}

// PutWaiting publishes the request, in a group with the requests arriving
// with it, and returns nil once JetStream acknowledged storing that group's
// message. It blocks for at most about twice PublishTimeout: its group may
// wait for the groups ahead of it to be answered. A stream at its limits
// gives buffer.ErrFull; NATS
// unreachable, a timeout or a missing stream an error wrapping
// buffer.ErrStorage; a request above the server's max_payload
// buffer.ErrTooLarge; after CloseWrites buffer.ErrClosed. A failed publish
// fails every request of its group alike. lines are copied; the caller may
// reuse them. w, when not nil, is finished when the replica that delivers
// the rows reports back.
func (q *Queue) PutWaiting(key buffer.Key, lines [][]byte, w *buffer.Waiter) error {
	if len(lines) == 0 {
		return nil
	}
	if q.closed.Load() {
		return buffer.ErrClosed
	}
	if !q.nc.IsConnected() {
		q.m.publishes.WithLabelValues(resultError).Inc()
		return fmt.Errorf("%w: not connected to NATS", buffer.ErrStorage)
	}
	// Checked here, alone: a group never holds a request that would make
	// its message too large, so its neighbours never fail for it.
	size := buffer.Size(lines)
	if mp := q.nc.MaxPayload(); int64(size+len(key.Token))+messageOverhead > mp {
		q.m.publishes.WithLabelValues(resultTooLarge).Inc()
		return &buffer.TooLargeError{Limit: fmt.Sprintf("the queue's message limit (nats-server max_payload, %d bytes)", mp)}
	}
	var reply, waitID string
	if w != nil {
		w.AddPart() // before publishing: the outcome may arrive before the PubAck
		waitID = q.waits.add(w, time.Now().Add(q.opts.WaitTimeout+5*time.Second))
		reply = q.procID + "." + waitID
	}
	start := time.Now()
	var err error
	if q.opts.NoGroupCommit {
		err = q.publishOne(key, lines, size, reply)
	} else {
		p := q.newPending()
		p.key, p.lines, p.size, p.reply = key, lines, recordLen(key, reply, size), reply
		err = q.commitRequest(p)
		p.key, p.lines, p.reply = buffer.Key{}, nil, ""
		q.pendings.Put(p)
	}
	q.m.publishDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		if waitID != "" {
			q.waits.take(waitID)
		}
		return err
	}
	q.m.published.Inc()
	return nil
}

// publishOne publishes the request as a single-request message
// (NoGroupCommit) and waits for its PubAck.
func (q *Queue) publishOne(key buffer.Key, lines [][]byte, size int, reply string) error {
	paf, err := q.js.PublishMsgAsync(q.singleMessage(key, lines, size, reply))
	if err == nil {
		if err, _ = q.awaitPubAck(paf); err == nil {
			return nil
		}
	}
	return q.publishError(err, 1)
}

// singleMessage is one request as a message of its own (the format before
// group commit): its rows, datasource, row count, client token (in
// pass-through mode) and wait=true reply subject.
func (q *Queue) singleMessage(key buffer.Key, lines [][]byte, size int, reply string) *nats.Msg {
	msg := nats.NewMsg(q.opts.Subject + "." + key.Datasource)
	data := make([]byte, 0, size)
	for _, l := range lines {
		data = append(data, l...)
		data = append(data, '\n')
	}
	msg.Data = data
	msg.Header.Set(hdrDatasource, key.Datasource)
	msg.Header.Set(hdrRows, strconv.Itoa(len(lines)))
	if key.Token != "" {
		msg.Header.Set(hdrToken, key.Token)
	}
	if reply != "" {
		msg.Header.Set(hdrReply, reply)
	}
	return msg
}

// publishError is what PutWaiting returns for a publish of n requests that
// failed with err, counted by result.
func (q *Queue) publishError(err error, n int) error {
	switch {
	case full(err):
		q.m.publishes.WithLabelValues(resultFull).Add(float64(n))
		return buffer.ErrFull
	case errors.Is(err, nats.ErrMaxPayload):
		q.m.publishes.WithLabelValues(resultTooLarge).Add(float64(n))
		return &buffer.TooLargeError{Limit: fmt.Sprintf("the queue's message limit (nats-server max_payload, %d bytes)", q.nc.MaxPayload())}
	}
	q.m.publishes.WithLabelValues(resultError).Add(float64(n))
	return fmt.Errorf("%w: publish to stream %s: %v", buffer.ErrStorage, q.opts.Stream, err)
}

// full reports whether a publish failed because the stream (or the
// server's JetStream storage) is at its limits, with DiscardNew.
func full(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	for _, m := range []string{"maximum bytes exceeded", "maximum messages exceeded",
		"maximum messages per subject exceeded", "insufficient resources", "resource limits exceeded"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// Ready returns nil while connected to NATS, else why not; /ready answers
// 503 with it.
func (q *Queue) Ready() error {
	if q.nc.IsConnected() {
		return nil
	}
	return errors.New("not connected to NATS")
}

// CloseWrites makes every later PutWaiting fail with buffer.ErrClosed.
// Requests already queued for a group are still published, and answered;
// the bridge and wait=true outcomes keep working until Close.
func (q *Queue) CloseWrites() { q.closed.Store(true) }

// Close publishes the requests still queued for a group and waits for
// their PubAcks, flushes outstanding acks and naks and closes the
// connection. Call it after the flusher's Run returned: a message still
// held then is naked first, so another replica delivers it. Close is
// idempotent.
func (q *Queue) Close() error {
	q.stopCommitter()
	if q.stopBG != nil {
		q.stopBG()
		q.bg.Wait()
	}
	for _, m := range q.held.takeAll() {
		_ = m.Nak()
		q.m.naked.Inc()
	}
	if q.nc.IsClosed() {
		return nil
	}
	err := q.nc.FlushTimeout(5 * time.Second)
	q.nc.Close()
	return err
}

// housekeeping reports progress on held messages every AckWait/3, so a
// message waiting on a slow upstream is not redelivered to another replica,
// and forgets wait=true entries whose client has given up.
func (q *Queue) housekeeping(ctx context.Context) {
	t := time.NewTicker(max(q.opts.AckWait/3, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, m := range q.held.older(now.Add(-q.opts.AckWait / 3)) {
				_ = m.InProgress()
			}
			q.waits.expire(now)
		}
	}
}
