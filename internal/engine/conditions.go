package engine

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/txn"
)

// Conditions and reasons on the changes to held locks: an If-Match
// header's precondition (a stale page or script must not free the next
// holder's lock), and why a lock was forced free.

// ErrPrecondition: a lock's fencing token is not the one a conditional
// change was made for; nothing changed. A *PreconditionError has the
// locks as they are.
var ErrPrecondition = errors.New("precondition failed")

// Precondition is what a change asks of its locks before it is made: each
// one's fencing token is one of Tokens or, with Held, the lock is held
// (If-Match: *).
type Precondition struct {
	Tokens []uint64
	Held   bool
}

// PreconditionError says which lock failed a precondition, and holds
// every lock of the change as it is now.
type PreconditionError struct {
	Locks map[string]Snapshot
	msg   string
}

func (e *PreconditionError) Error() string { return e.msg }
func (e *PreconditionError) Unwrap() error { return ErrPrecondition }

// check returns a *PreconditionError if a lock in names fails p.
func (p Precondition) check(tx txn.Reader, names []string) error {
	for _, name := range names {
		s := current(tx, name)
		switch {
		case s.Free() && (p.Held || len(p.Tokens) > 0):
			return p.failed(tx, names, fmt.Sprintf("%q is free now", name))
		case p.Held, slices.Contains(p.Tokens, s.Token):
			continue
		}
		return p.failed(tx, names, fmt.Sprintf("%q is now at token %d, held with key %q by %s", name, s.Token, s.Key, s.HoldersString()))
	}
	return nil
}

// failed is the error of p on the locks in names, found because of what.
func (p Precondition) failed(tx txn.Reader, names []string, what string) error {
	asked := "held"
	if !p.Held {
		tokens := make([]string, len(p.Tokens))
		for i, t := range p.Tokens {
			tokens[i] = strconv.FormatUint(t, 10)
		}
		asked = "at token " + strings.Join(tokens, " or ")
	}
	return &PreconditionError{
		Locks: snapshots(tx, names),
		msg: fmt.Sprintf("%v: the change was asked for while the lock was %s, but %s: it changed hands since it was read, and nothing was changed; %s",
			ErrPrecondition, asked, what, advice.ReadAgain),
	}
}

// An Option qualifies a release, a renewal or a forced release.
type Option func(*options)

type options struct {
	precondition *Precondition
	reason       string
}

// IfMatch makes the change only if every lock it names meets p;
// otherwise it fails with a *PreconditionError and changes nothing.
func IfMatch(p Precondition) Option { return func(o *options) { o.precondition = &p } }

// Because says why a lock is forced free: its history, the stream and
// the log keep the reason.
func Because(reason string) Option { return func(o *options) { o.reason = reason } }

func optionsOf(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}
