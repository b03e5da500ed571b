package buffer

import (
	"cmp"
	"slices"
	"sync"
	"time"
	"unsafe"
)

// slabSize is the size of the blocks entries are carved from. An entry
// larger than a quarter of it gets memory of its own.
const slabSize = 1 << 20

// minFreeSlabs is how many empty slabs are kept for reuse even when none
// are in use, so a quiet proxy is ready for the next burst without
// allocating.
const minFreeSlabs = 4

// peakWindow is how long the arena remembers how many slabs were in use at
// once. Empty slabs are kept for reuse up to the larger of the last two
// windows' peaks, so a steady load never allocates, and the memory of a burst
// goes back to the garbage collector a minute or two after it.
const peakWindow = time.Minute

// arena hands out the memory entries are stored in. Small entries are
// carved one after another from 1 MiB slabs; a slab is reused, without being
// zeroed again, once every entry in it has been released. In steady state
// the accept path therefore allocates nothing per request, the garbage
// collector has a few large pointer-free blocks to look at instead of one
// object per request, and the kernel is not asked for fresh pages (which
// must be zeroed, and on some VMs fault in slowly) for every burst.
//
// Slabs are never shared between live and reused memory: a slab goes back
// to the free list only when its live byte count reaches zero and it is not
// the one being carved. The total slab memory is capped at the buffer's byte
// limit; past it, and for large entries, memory comes from the Go heap as a
// plain allocation, so one stuck datasource pinning a few bytes in many
// slabs can never make the buffer hold more than twice its limit.
type arena struct {
	mu       sync.Mutex
	maxSlabs int
	cur      *slab   // being carved; nil before the first small entry
	free     []*slab // empty, ready to be carved again
	all      []*slab // every slab, sorted by address, to find one from its bytes
	inUse    int     // slabs holding live bytes, cur included
	made     int     // slabs ever allocated

	// peak and prevPeak are the most slabs in use at once in the current
	// and the previous peakWindow, which started at windowStart.
	peak, prevPeak int
	windowStart    time.Time
}

type slab struct {
	mem  []byte
	base uintptr // address of mem[0]
	off  int     // next free byte
	live int     // bytes handed out and not yet released
	free bool    // on the free list
}

// newArena returns an arena whose slabs never take more than maxBytes; a
// buffer smaller than one slab stores every entry on the heap.
func newArena(maxBytes int) *arena {
	return &arena{maxSlabs: maxBytes / slabSize}
}

// alloc returns n bytes (len and cap n) that no live entry uses. Their
// contents are unspecified: the caller overwrites all of them.
func (a *arena) alloc(n int) []byte {
	if n > slabSize/4 {
		return make([]byte, n)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cur == nil || a.cur.off+n > len(a.cur.mem) {
		if !a.next() {
			return make([]byte, n)
		}
	}
	s := a.cur
	p := s.mem[s.off : s.off+n : s.off+n]
	s.off += n
	s.live += n
	return p
}

// next retires the current slab and makes a fresh or reused one current. It
// reports false when the slab budget is spent. a.mu is held.
func (a *arena) next() bool {
	if old := a.cur; old != nil {
		a.cur = nil
		if old.live == 0 {
			a.recycle(old)
		}
	}
	if n := len(a.free); n > 0 {
		a.cur = a.free[n-1]
		a.cur.free = false
		a.free[n-1] = nil
		a.free = a.free[:n-1]
		a.inUse++
		a.peak = max(a.peak, a.inUse)
		return true
	}
	if len(a.all) >= a.maxSlabs {
		return false
	}
	s := &slab{mem: make([]byte, slabSize)}
	a.made++
	s.base = uintptr(unsafe.Pointer(unsafe.SliceData(s.mem)))
	i, _ := slices.BinarySearchFunc(a.all, s.base, byBase)
	a.all = slices.Insert(a.all, i, s)
	a.cur = s
	a.inUse++
	a.peak = max(a.peak, a.inUse)
	return true
}

// release gives back pieces of memory alloc returned and returns their total
// length. A piece may be any part of one allocation; pieces of memory that
// came from the heap are left to the garbage collector.
func (a *arena) release(pieces [][]byte) (n int) {
	if len(pieces) == 0 {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var last *slab // consecutive pieces often share a slab: skip the search
	for _, p := range pieces {
		n += len(p)
		if len(p) == 0 {
			continue
		}
		addr := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
		s := last
		if s == nil || addr-s.base >= uintptr(len(s.mem)) {
			if s = a.find(addr); s == nil {
				continue
			}
			last = s
		}
		s.live -= len(p)
		switch {
		case s.live < 0:
			// A consumer released more than it took (a bug): this slab's
			// count can no longer say when it is empty, so it is never
			// reused; the garbage collector has it once nothing refers to it.
			a.drop(s)
		case s.live == 0 && s != a.cur:
			a.recycle(s)
		}
	}
	a.trim(time.Now())
	return n
}

// recycle makes an empty slab reusable, or lets the garbage collector have
// it when more slabs are free than were in use lately (after a burst). a.mu
// is held.
func (a *arena) recycle(s *slab) {
	s.off = 0
	s.free = true
	a.inUse--
	a.free = append(a.free, s)
	a.trim(time.Now())
}

// trim starts a new peak window when the current one is over, and lets the
// garbage collector have the free slabs beyond the larger of the last two
// windows' peaks. It runs on every release, so memory goes back after a
// burst even when the traffic that follows is too light to fill a slab.
// a.mu is held.
func (a *arena) trim(now time.Time) {
	if now.Sub(a.windowStart) >= peakWindow {
		a.prevPeak, a.peak, a.windowStart = a.peak, a.inUse, now
	}
	for keep := max(a.peak, a.prevPeak, minFreeSlabs); len(a.free) > keep; {
		n := len(a.free) - 1
		a.free[n].free = false
		a.forget(a.free[n])
		a.free[n] = nil
		a.free = a.free[:n]
	}
}

// drop abandons a slab whose count went wrong. a.mu is held.
func (a *arena) drop(s *slab) {
	switch {
	case s.free:
		if i := slices.Index(a.free, s); i >= 0 {
			a.free = slices.Delete(a.free, i, i+1)
		}
		s.free = false
	case s == a.cur:
		a.cur = nil
		a.inUse--
	default:
		a.inUse--
	}
	a.forget(s)
}

// forget removes s from the slabs the arena knows. a.mu is held.
func (a *arena) forget(s *slab) {
	if i, found := slices.BinarySearchFunc(a.all, s.base, byBase); found {
		a.all = slices.Delete(a.all, i, i+1)
	}
}

// find returns the slab holding the byte at addr, or nil. a.mu is held.
func (a *arena) find(addr uintptr) *slab {
	i, found := slices.BinarySearchFunc(a.all, addr, byBase)
	if found {
		return a.all[i]
	}
	if i == 0 {
		return nil
	}
	s := a.all[i-1]
	if addr-s.base < uintptr(len(s.mem)) {
		return s
	}
	return nil
}

// slabBytes is the memory the slabs take, free ones included.
func (a *arena) slabBytes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.all) * slabSize
}

func byBase(s *slab, addr uintptr) int { return cmp.Compare(s.base, addr) }
