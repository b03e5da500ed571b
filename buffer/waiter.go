package buffer

import (
	"sync"
	"sync/atomic"
)

// Failure is why a waiting request's rows were not delivered: the
// upstream's final answer (Status and Message, e.g. 403 and its error text)
// and the drop reason the flusher counted them under.
type Failure struct {
	Status  int
	Message string
	Reason  string
	// Detail, when set, is the upstream's whole error text, for logs and
	// dead letters only: it may quote rows (ClickHouse's "before: …"), and
	// a batch mixes rows of many clients, so clients are told Message.
	Detail string
	// Retained means the rows were neither delivered nor dropped: the
	// process stopped first. A durable store still owes them upstream.
	Retained bool
}

// Waiter tells a client that sent wait=true when every one of its rows was
// acknowledged upstream or refused for good. The proxy creates one per such
// request and passes it to PutWaiting; the consumer calls AddPart for every
// piece of the entry it sends separately and Finish once per piece. Costs are
// per request and per piece, never per row. Safe for concurrent use.
type Waiter struct {
	pending                 atomic.Int32
	successful, quarantined atomic.Int64
	mu                      sync.Mutex // protects failure
	failure                 *Failure
	done                    chan struct{}
	onDone                  func(*Failure)
	onAbandon               atomic.Pointer[func()]
}

// NewWaiter returns a Waiter with no pieces yet.
func NewWaiter() *Waiter { return &Waiter{done: make(chan struct{})} }

// AddPart records one more piece of the request that must Finish before the
// request is done. Call it before the piece is sent, and before the last
// outstanding piece can Finish.
func (w *Waiter) AddPart() { w.pending.Add(1) }

// OnDone registers fn to run, once, when the last piece finishes, with the
// first failure (nil if every piece was delivered). It runs on the goroutine
// that finished the last piece, so it must be quick. Call it before the
// Waiter is handed to the buffer; at most one fn is kept.
func (w *Waiter) OnDone(fn func(*Failure)) { w.onDone = fn }

// Finish records the outcome of one piece: rows acknowledged as successful
// or quarantined, or a failure (nil when delivered). The first failure wins.
// When the last piece finishes, Done is closed.
func (w *Waiter) Finish(successful, quarantined int, f *Failure) {
	w.successful.Add(int64(successful))
	w.quarantined.Add(int64(quarantined))
	if f != nil {
		w.mu.Lock()
		if w.failure == nil {
			w.failure = f
		}
		w.mu.Unlock()
	}
	if w.pending.Add(-1) == 0 {
		if w.onDone != nil {
			w.mu.Lock()
			f := w.failure
			w.mu.Unlock()
			w.onDone(f)
		}
		close(w.done)
	}
}

// OnAbandon registers fn to run, once, if the client stops waiting before
// the outcome (Abandon): a store that holds the Waiter until it can hand
// it to the buffer lets go of it then. At most one fn is kept.
func (w *Waiter) OnAbandon(fn func()) { w.onAbandon.Store(&fn) }

// Abandon says the client stopped waiting (its WAIT_TIMEOUT passed). The
// rows are still delivered; only the Waiter is no longer needed.
func (w *Waiter) Abandon() {
	if fn := w.onAbandon.Swap(nil); fn != nil {
		(*fn)()
	}
}

// Done is closed when every piece has finished.
func (w *Waiter) Done() <-chan struct{} { return w.done }

// Result returns the rows acknowledged so far and the first failure, if any.
// After Done is closed it is final.
func (w *Waiter) Result() (successful, quarantined int, f *Failure) {
	w.mu.Lock()
	f = w.failure
	w.mu.Unlock()
	return int(w.successful.Load()), int(w.quarantined.Load()), f
}
