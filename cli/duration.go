package cli

import (
	"fmt"
	"time"

	"github.com/locker-ci/locker/internal/duration"
)

// durationFlag is a duration flag as every command reads one
// (internal/duration, as the server reads its fields), saying a mistake
// the same way for each: --wait, --ttl, --grace, --expires-in.
type durationFlag struct {
	name string // "wait", for messages
	// forever says the flag also takes "forever", no end (the waits).
	forever bool
	// zero says 0 is a value (the waits: 0 does not wait); the others
	// must be positive.
	zero bool

	d       time.Duration
	text    string // as given, for a request that sends it on
	endless bool   // "forever" was given
	set     bool
}

// what says what the flag takes, for messages.
func (f *durationFlag) what() string {
	switch {
	case f.forever:
		return "a duration such as 30s, 10m or 2h, 0 not to wait, or forever"
	case f.zero:
		return "a duration such as 30s, 10m or 2h, or 0"
	}
	return "a positive duration such as 90s, 10m or 2h"
}

// Set reads the flag's value.
func (f *durationFlag) Set(s string) error {
	f.set, f.text = true, s
	if f.forever && s == "forever" {
		f.d, f.endless = 0, true
		return nil
	}
	d, err := duration.Parse(s)
	if err == nil && d == 0 && !f.zero {
		err = fmt.Errorf("it must be more than 0")
	}
	if err != nil {
		return fmt.Errorf("--%s must be %s (got %q: %v)", f.name, f.what(), s, err)
	}
	f.d, f.endless = d, false
	return nil
}

func (f *durationFlag) String() string {
	if f.endless {
		return "forever"
	}
	return f.text
}

// durationVar defines the duration flag f, called f.name, on e's flags,
// with its default (none when "").
func (e *env) durationVar(f *durationFlag, def string) {
	if def != "" {
		if err := f.Set(def); err != nil {
			panic(err) // a default of this package's own
		}
		f.set = false
	}
	e.flags.Var(f, f.name, "")
}
