package buffer

import (
	"context"
	"errors"
	"time"
)

// PutWait is PutWaiting for a producer that would rather wait than be
// refused (a spool or queue replaying into the buffer, a file being
// replayed): when the lines do not fit now, it blocks until the consumer
// releases enough to make room, then stores them. It returns nil once they
// are stored; ErrClosed, ErrDenied and ErrTooLarge at once, as PutWaiting
// does; and ctx.Err() when ctx ends before they fit, having stored nothing.
// The first attempt is made even when ctx has already ended.
//
// ErrFull, and ErrTooManyDatasources, ErrTooManyTokens and ErrStreamShare
// that wrap it, are never returned: they are what PutWait waits out. It is
// woken by Release, Verify and Close, never by polling, and only while
// someone waits: Put and Release pay nothing for it otherwise. A stream
// refused for its share while no other stream holds anything, only
// attempted lately, is also woken when that attempt is ActiveFor old. Many callers may wait at once;
// each is woken whenever room may have appeared and tries again, so none
// is forgotten, though which of them gets in first is not specified. Lines
// are copied, as by Put. Safe for concurrent use.
func (b *Buffer) PutWait(ctx context.Context, key Key, lines [][]byte, w *Waiter) error {
	if err := b.PutWaiting(key, lines, w); !errors.Is(err, ErrFull) {
		return err
	}
	// lapse wakes a wait on the share that no Release may end: the others
	// stop accepting when their last attempt is ActiveFor old.
	var lapse *time.Timer
	defer func() {
		if lapse != nil {
			lapse.Stop()
		}
	}()
	for {
		// Subscribe before trying again: room that appears between the
		// try and the wait then closes this very channel.
		room := b.nextRoom()
		err := b.PutWaiting(key, lines, w)
		if !errors.Is(err, ErrFull) {
			return err
		}
		var lapsed <-chan time.Time
		if errors.Is(err, ErrStreamShare) {
			if d := b.shareLapse(key); d > 0 {
				if lapse == nil {
					lapse = time.NewTimer(d)
				} else {
					lapse.Reset(d)
				}
				lapsed = lapse.C
			}
		}
		select {
		case <-room:
		case <-lapsed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitRoom blocks until the buffer is less than fill full (see Fill), and
// returns nil then, or ctx.Err() when ctx ends first. Like PutWait it is
// woken by Release, not by polling. A closed buffer is still waited on, as
// its consumer keeps releasing what it holds. Safe for concurrent use.
func (b *Buffer) WaitRoom(ctx context.Context, fill float64) error {
	for b.Fill() >= fill {
		room := b.nextRoom()
		if b.Fill() < fill {
			break
		}
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// nextRoom returns a channel that is closed the next time room may appear
// in the buffer. A caller checks for room after taking it, so no release
// between the check and the wait goes unnoticed.
func (b *Buffer) nextRoom() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.room == nil {
		b.room = make(chan struct{})
	}
	return b.room
}

// roomLocked wakes everyone waiting for room, if anyone is. b.mu is held.
func (b *Buffer) roomLocked() {
	if b.room != nil {
		close(b.room)
		b.room = nil
	}
}
