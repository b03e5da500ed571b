package idempotency

import (
	"fmt"
	"time"
)

// Pending is a request with an Idempotency-Key that has not ended. The
// owner's Pending (from Proceed) must be ended exactly once, with Done or
// Forget; a later Done or Forget does nothing. A waiter's Pending (from
// InFlight) can only Wait: its Stored, Done and Forget do nothing. Safe for
// concurrent use; the zero Pending is not usable.
type Pending struct {
	s     *Store
	e     *entry
	owner bool
}

// Stored records that the request's events are now stored (durably, as
// far as the caller's storage goes): with Dir, the key is appended to the
// log with the provisional answer a (synced with Fsync), so that after a
// crash a retry replays a instead of storing the events again. The key
// stays in flight until Done. Calling Stored is optional: Done alone also
// persists.
//
// A non-nil error means the record could not be written (counted in
// tbproxy_idempotency_log_errors_total): the key is still remembered in
// memory, but a restart may forget it. The caller logs it and answers as
// usual, since the request is stored. Stored may block on the disk.
func (p *Pending) Stored(a Answer) error {
	if !p.owner {
		return nil
	}
	s, e := p.s, p.e
	a = cutError(a)
	if s.lg == nil {
		return nil
	}
	s.lg.mu.Lock()
	defer s.lg.mu.Unlock()
	s.mu.Lock()
	if e.state != stateInFlight {
		s.mu.Unlock()
		return nil
	}
	e.answer, e.at = a, s.now().UnixNano()
	s.logLocked(e)
	r := record{digest: e.digest, sum: e.sum, at: e.at, kind: kindStored, answer: a}
	s.mu.Unlock()
	if err := s.lg.appendLocked(&r); err != nil {
		return fmt.Errorf("idempotency: persist key: %w", err)
	}
	return nil
}

// Done ends the request with its final answer a: waiters wake and replay
// a, and the key is remembered for Window from now. With Dir, a is
// appended to the log unless Stored already wrote the same answer; a
// failure to write is counted and logged, not returned. Done may block on
// the log's lock and the disk; waiters wake before its record is written.
func (p *Pending) Done(a Answer) {
	if !p.owner {
		return
	}
	s, e := p.s, p.e
	a = cutError(a)
	if s.lg != nil {
		// Held from the table's change to the record's append, so the log
		// orders records of one digest as the table saw them, even if the
		// key is evicted and begun again meanwhile.
		s.lg.mu.Lock()
		defer s.lg.mu.Unlock()
	}
	s.mu.Lock()
	if e.state != stateInFlight {
		s.mu.Unlock()
		return
	}
	// Unless Stored logged this very answer. If Stored's append failed,
	// the compaction it asked for rewrites the key from memory.
	write := s.lg != nil && !(e.logged && e.answer == a)
	e.state, e.answer, e.at, e.final = stateDone, a, s.now().UnixNano(), true
	s.pushLocked(e)
	if s.lg != nil {
		s.logLocked(e)
	}
	if e.wake != nil {
		close(e.wake)
	}
	r := record{digest: e.digest, sum: e.sum, at: e.at, kind: kindDone, answer: a}
	s.mu.Unlock()
	if !write {
		return
	}
	if err := s.lg.appendLocked(&r); err != nil {
		s.log.Warn("idempotency: cannot persist a finished key; a restart may forget it", "err", err)
	}
}

// Forget ends a request that stored nothing (it was refused): the key is
// removed, and waiters wake with ok=false to Begin again. If Stored had
// persisted the key, a record that forgets it is appended (a failure is
// counted and logged). Forget may block on the disk.
func (p *Pending) Forget() {
	if !p.owner {
		return
	}
	s, e := p.s, p.e
	if s.lg != nil {
		s.lg.mu.Lock()
		defer s.lg.mu.Unlock()
	}
	s.mu.Lock()
	if e.state != stateInFlight {
		s.mu.Unlock()
		return
	}
	write := e.logged
	s.removeLocked(e)
	e.state = stateForgotten
	if e.wake != nil {
		close(e.wake)
	}
	r := record{digest: e.digest, sum: e.sum, at: s.now().UnixNano(), kind: kindForgotten}
	s.mu.Unlock()
	if !write {
		return
	}
	if err := s.lg.appendLocked(&r); err != nil {
		s.log.Warn("idempotency: cannot persist a forgotten key; a restart may replay it", "err", err)
	}
}

// Wait blocks until the request ends or timeout passes. It returns the
// final answer and ok=true if the request ended with Done; ok=false if it
// was forgotten (timedOut=false: Begin again, the key is free) or did not
// end in time (timedOut=true: answer 409). It returns at once if the
// request has already ended. Any number of goroutines may Wait.
func (p *Pending) Wait(timeout time.Duration) (a Answer, ok, timedOut bool) {
	s, e := p.s, p.e
	s.mu.Lock()
	if e.state == stateInFlight && e.wake == nil {
		e.wake = make(chan struct{})
	}
	wake := e.wake
	st, a := e.state, e.answer
	s.mu.Unlock()
	if st == stateInFlight {
		if timeout <= 0 {
			return Answer{}, false, true
		}
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-wake:
		case <-t.C:
			return Answer{}, false, true
		}
		s.mu.Lock()
		st, a = e.state, e.answer
		s.mu.Unlock()
	}
	if st != stateDone {
		return Answer{}, false, false
	}
	return a, true, false
}

// logLocked marks e as belonging in the log.
func (s *Store) logLocked(e *entry) {
	if !e.logged {
		e.logged = true
		s.logged++
	}
}
