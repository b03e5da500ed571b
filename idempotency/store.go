package idempotency

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for the zero Options fields.
const (
	DefaultWindow  = 10 * time.Minute
	DefaultMaxKeys = 100_000
)

// expireBatch is how many expired keys Begin frees at most, besides the
// one it may look up: enough to keep up with the keys Done finishes (one
// per Proceed), bounded so no call pays for a long idle spell.
const expireBatch = 4

// ErrClosed is returned by Stored once the store is closed: the key is
// remembered in memory but not persisted.
var ErrClosed = errors.New("idempotency: closed")

// Answer is what the first request with a key was told, and what its
// retries are told again. The zero Answer means none.
type Answer struct {
	Status      int    // HTTP status the first request got (202, 200, or upstream's error status with wait=true)
	Successful  int    // rows stored (or, with wait=true, accepted upstream)
	Quarantined int    // rows upstream quarantined (wait=true)
	Error       string // the JSON error message when Status is an error; "" otherwise; cut to MaxErrorBytes
}

// Outcome is what Begin found for a key.
type Outcome uint8

// The outcomes of Begin.
const (
	Proceed  Outcome = iota // new key: the caller stores the request and must end the returned *Pending
	Replay                  // seen with the same body: answer the returned Answer, store nothing
	Mismatch                // seen with a different body: 422
	InFlight                // the first request with this key has not finished: Wait on the returned *Pending, or 409
	Full                    // every remembered key is in flight and the table is full: 503 with Retry-After: 1
)

// numOutcomes counts the outcomes.
const numOutcomes = Full + 1

// String returns the outcome's name as the requests_total metric labels it.
func (o Outcome) String() string {
	switch o {
	case Proceed:
		return "proceed"
	case Replay:
		return "replay"
	case Mismatch:
		return "mismatch"
	case InFlight:
		return "in_flight"
	case Full:
		return "full"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Options configure a Store. The zero value is a memory-only store with
// the defaults.
type Options struct {
	// Window is how long a key is remembered after its request finished
	// (Done); 0 means DefaultWindow.
	Window time.Duration
	// MaxKeys bounds the keys remembered, in flight ones included; 0 means
	// DefaultMaxKeys. Beyond it the oldest finished key is evicted
	// (counted). Each key costs about 250 bytes of memory, and 256 bytes
	// on disk (up to twice that before a compaction).
	MaxKeys int
	// Dir, if set, keeps the window across a restart in the log file
	// Dir/idempotency.log (created with Dir if missing; one process at a
	// time, held by a lock on Dir/idempotency.lock). "" keeps keys in
	// memory only.
	Dir string
	// Fsync makes Stored, Done and Forget sync the log before they return.
	// Without it the OS writes records back when it chooses: a crash of
	// the process loses nothing, but a crash of the machine loses the
	// records of roughly the last 30 seconds (Linux's dirty_expire), whose
	// keys a retry then stores again. See the package documentation.
	Fsync bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Registerer takes the store's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives failures of the log file that no caller is told of
	// (a compaction, Done's append); nil discards them. They are counted
	// in tbproxy_idempotency_log_errors_total either way.
	Logger *slog.Logger
}

// Store remembers Idempotency-Keys and the answers their requests got,
// per (scope, datasource, key). It is safe for concurrent use. Make one
// with Open and end it with Close; the zero Store is not usable.
//
// Lock order: Store.lg.mu, then Store.mu.
type Store struct {
	window  int64 // ns
	maxKeys int
	now     func() time.Time
	met     *metrics
	log     *slog.Logger

	mu     sync.Mutex          // protects m, head, tail, logged and every entry's fields other than digest and sum
	m      map[[32]byte]*entry // every remembered key, by digest
	head   *entry              // the finished entries, oldest Done first, linked by next
	tail   *entry              // the newest finished entry
	logged int                 // entries in m that belong in the log (entry.logged)

	lg *logFile // nil without Dir
}

// state is where an entry's request is.
type state uint8

const (
	stateInFlight  state = iota // Begin let it through; not ended yet
	stateDone                   // ended by Done (or read from the log); its answer replays
	stateForgotten              // ended by Forget; no longer in the table
)

// entry is one remembered key. The owner's Pending lives inside it, so a
// new key costs one allocation.
type entry struct {
	p      Pending  // the owner's handle: Begin returns &e.p for Proceed
	digest [32]byte // the map key; immutable
	sum    [32]byte // the request's fingerprint; immutable
	answer Answer   // final once done; while in flight, the provisional answer Stored persisted
	at     int64    // unix ns when Done ended it, or when Stored persisted it while in flight
	wake   chan struct{}
	prev   *entry // in the finished list
	next   *entry
	state  state
	final  bool // answer came from Done, not from Stored (here or before a restart)
	logged bool // Stored or Done gave it a record in the log (or tried to: a failed append leaves the log to a compaction)
}

// Open returns a store. With Dir it reads Dir/idempotency.log, keeps the
// keys whose window has not passed (the newest MaxKeys of them), drops
// and counts expired and corrupt records, and rewrites the file with only
// what it kept. An error means the directory or file could not be used,
// or the metrics could not be registered; nothing is left open then.
func Open(o Options) (*Store, error) {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = DefaultMaxKeys
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		window:  int64(o.Window),
		maxKeys: o.MaxKeys,
		now:     o.Now,
		log:     o.Logger,
		m:       make(map[[32]byte]*entry, min(o.MaxKeys, 1024)),
	}
	s.met = newMetrics(s)
	if o.Dir != "" {
		dir, err := filepath.Abs(o.Dir)
		if err == nil {
			err = os.MkdirAll(dir, 0o700)
		}
		if err != nil {
			return nil, fmt.Errorf("idempotency: %w", err)
		}
		if s.lg, err = openLog(s, dir, o.Fsync); err != nil {
			return nil, err
		}
	}
	if err := s.met.register(o.Registerer); err != nil {
		s.Close()
		return nil, fmt.Errorf("idempotency: register metrics: %w", err)
	}
	return s, nil
}

// Close stops the log's compactions, syncs the log (so nothing written
// before a clean Close is lost even to a power cut) and closes it; the
// store still answers Begin from memory, but persists nothing more.
// Close is idempotent and blocks until a compaction under way has ended.
func (s *Store) Close() error {
	if s.lg == nil {
		return nil
	}
	return s.lg.close()
}

// Begin looks up key, sent by scope (the client's identity: a client name,
// a hex SHA-256 of its token, or "") for datasource, with a body whose
// Fingerprint is sum. It does not retain key, and does not block but on
// the store's lock.
//
//   - Proceed: a new key. The caller stores the request and must end the
//     returned Pending with Done or Forget (else the key stays in flight,
//     taking a slot, until a restart).
//   - Replay: the key finished with this body; answer the returned Answer.
//   - Mismatch: the key was used with another body (in flight or
//     finished); answer 422.
//   - InFlight: the key's first request, with this body, has not ended;
//     Wait on the returned Pending (a waiter's handle: its Stored, Done
//     and Forget do nothing), or answer 409.
//   - Full: MaxKeys keys are remembered and every one is in flight; answer
//     503 with Retry-After: 1.
//
// The Pending is nil but for Proceed and InFlight; the Answer is zero but
// for Replay. A Replay does not allocate; a Proceed allocates one entry
// (benchmark: BenchmarkBegin).
func (s *Store) Begin(scope, datasource string, key []byte, sum [32]byte) (Outcome, *Pending, Answer) {
	d := digest(scope, datasource, key)
	now := s.now().UnixNano()
	s.mu.Lock()
	s.expireLocked(now, expireBatch)
	if e, ok := s.m[d]; ok {
		switch {
		case e.state == stateDone && now-e.at >= s.window:
			s.removeLocked(e)
		case e.sum != sum:
			s.mu.Unlock()
			s.met.requests[Mismatch].Inc()
			return Mismatch, nil, Answer{}
		case e.state == stateInFlight:
			s.mu.Unlock()
			s.met.requests[InFlight].Inc()
			return InFlight, &Pending{s: s, e: e}, Answer{}
		default:
			a := e.answer
			s.mu.Unlock()
			s.met.requests[Replay].Inc()
			return Replay, nil, a
		}
	}
	if len(s.m) >= s.maxKeys {
		h := s.head
		if h == nil {
			s.mu.Unlock()
			s.met.requests[Full].Inc()
			return Full, nil, Answer{}
		}
		if now-h.at < s.window {
			s.met.evicted.Inc()
		}
		s.removeLocked(h)
	}
	e := &entry{digest: d, sum: sum}
	e.p = Pending{s: s, e: e, owner: true}
	s.m[d] = e
	s.mu.Unlock()
	s.met.requests[Proceed].Inc()
	return Proceed, &e.p, Answer{}
}

// keys counts the keys remembered, for the keys gauge.
func (s *Store) keys() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(len(s.m))
}

// expireLocked frees up to n of the oldest finished keys whose window has
// passed at now.
func (s *Store) expireLocked(now int64, n int) {
	for ; n > 0 && s.head != nil && now-s.head.at >= s.window; n-- {
		s.removeLocked(s.head)
	}
}

// removeLocked takes e out of the table (and the finished list, if it is
// there).
func (s *Store) removeLocked(e *entry) {
	if s.m[e.digest] == e {
		delete(s.m, e.digest)
	}
	if e.state == stateDone {
		s.unlinkLocked(e)
	}
	if e.logged {
		e.logged = false
		s.logged--
	}
}

// pushLocked appends e to the finished list as its newest entry.
func (s *Store) pushLocked(e *entry) {
	e.prev, e.next = s.tail, nil
	if s.tail != nil {
		s.tail.next = e
	} else {
		s.head = e
	}
	s.tail = e
}

// unlinkLocked takes e out of the finished list.
func (s *Store) unlinkLocked(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else if s.head == e {
		s.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else if s.tail == e {
		s.tail = e.prev
	}
	e.prev, e.next = nil, nil
}
