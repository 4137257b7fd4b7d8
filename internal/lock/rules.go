package lock

import "time"

// Request is what a client asks of a lock.
type Request struct {
	Key, Requestor, Note string
	TTL                  time.Duration // lease from now; 0 leaves the holder's lease as it is
	// Build is the CI build the request runs in; a hold takes the build of
	// its latest request that names one.
	Build *Build
	// Named says the client gave its requestor's name. A request that did
	// not is one more anonymous job with the key as its name, not the
	// holder coming back: it must not bypass the queue.
	Named bool
	// Limit caps how many holds the lock may have at once (its holders'
	// counts); 0 for no cap. The request that takes a free lock sets it
	// (LimitDiffers).
	Limit int
}

// Verdict is what becomes of a request for a lock.
type Verdict int

const (
	Grant  Verdict = iota // take it now
	Refuse                // held with another key, or others queue first
	Queue                 // wait in line for it
)

// Decide says what becomes of req for l, which has queued requests
// waiting, when the client may wait (or not). A requestor that named
// itself and already holds l with req's key is granted again
// (re-entrant) while its limit has room; a request compatible with the
// holders is granted only when no one queues before it: no barging.
func Decide(l Lock, queued int, req Request, mayWait bool) Verdict {
	_, holds := l.Holder(req.Requestor)
	reentrant := holds && req.Named && l.Key == req.Key && !l.Full()
	switch {
	case reentrant || (Compatible(l, req) && queued == 0):
		return Grant
	case mayWait:
		return Queue
	}
	return Refuse
}

// Give returns l with one more count for req.Requestor, at now. A free
// lock gets a new fencing token from next.
func Give(l Lock, req Request, now time.Time, next func() uint64) Lock {
	l = l.Clone()
	if l.Free() {
		l = Lock{Key: req.Key, Token: next(), AcquiredAt: now, Limit: req.Limit}
	}
	h, ok := l.Holder(req.Requestor)
	if !ok {
		h = Holder{Name: req.Requestor, Hold: Hold{Since: now}}
	}
	h.Count++
	if req.Note != "" {
		h.Note = req.Note
	}
	if req.Build != nil {
		h.Build = req.Build
	}
	if req.TTL > 0 {
		h.ExpiresAt = now.Add(req.TTL)
	}
	l.SetHolder(h)
	return l
}

// Compatible reports whether req may share l with its holders: l is
// free, or held with req's key, with room under its limit (fewer holds,
// every holder's counts, than the limit: a semaphore's permits) and req
// asking for no other limit. The head of a queue, and the requests right behind
// it, are granted one by one for as long as each is compatible: a batch
// of same-key waiters goes in together.
func Compatible(l Lock, req Request) bool {
	if l.Free() {
		return true
	}
	return l.Key == req.Key && !LimitDiffers(l, req) && !l.Full()
}

// LimitDiffers reports whether req asks for a limit other than the one
// held l has (set by the request that took it while it was free).
func LimitDiffers(l Lock, req Request) bool {
	return !l.Free() && req.Limit != 0 && req.Limit != l.Limit
}

// Full reports whether l has as many holds as its limit allows.
func (l Lock) Full() bool { return l.Limit > 0 && l.Holds() >= l.Limit }

// Holds returns how many holds l has: its holders' counts.
func (l Lock) Holds() int {
	n := 0
	for _, h := range l.Holders {
		n += h.Count
	}
	return n
}

// Release returns l with one count of requestor's hold given back, or
// every count when all is set, and how many it gave back. Releasing a free
// lock, or for a requestor that holds nothing, gives back nothing; ok is
// false when l is held with another key.
func Release(l Lock, key, requestor string, all bool) (next Lock, released int, ok bool) {
	if l.Free() {
		return l, 0, true
	}
	if l.Key != key {
		return l, 0, false
	}
	h, holds := l.Holder(requestor)
	if !holds {
		return l, 0, true
	}
	l = l.Clone()
	if all || h.Count == 1 {
		l.RemoveHolder(requestor)
		return l, h.Count, true
	}
	h.Count--
	l.SetHolder(h)
	return l, 1, true
}

// Renew returns l with requestor's lease ending at until, its count as it
// was; ok is false when requestor holds nothing under key.
func Renew(l Lock, key, requestor string, until time.Time) (Lock, bool) {
	h, holds := l.Holder(requestor)
	if !holds || l.Key != key {
		return l, false
	}
	l = l.Clone()
	h.ExpiresAt = until
	l.SetHolder(h)
	return l, true
}

// Expire returns l without requestor if its lease ends at at, which is now
// or past; ok is false when the lease was renewed or released since.
func Expire(l Lock, requestor string, at time.Time) (Lock, bool) {
	h, holds := l.Holder(requestor)
	if !holds || !h.ExpiresAt.Equal(at) {
		return l, false
	}
	l = l.Clone()
	l.RemoveHolder(requestor)
	return l, true
}
