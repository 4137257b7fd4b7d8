package lock

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Build is the CI build a hold belongs to (the Concourse resource sends
// the one its put step runs in), and the build outcomes that end the hold.
type Build struct {
	ID       int64  `json:"id" yaml:"id"`                                 // the CI system's own ID, unique across its jobs
	Name     string `json:"name,omitempty" yaml:"name,omitempty"`         // the job's build number, e.g. "42"
	Job      string `json:"job,omitempty" yaml:"job,omitempty"`           // the job's name
	Pipeline string `json:"pipeline,omitempty" yaml:"pipeline,omitempty"` // the pipeline's name
	Team     string `json:"team,omitempty" yaml:"team,omitempty"`         // the team's name
	URL      string `json:"url,omitempty" yaml:"url,omitempty"`           // the build's page
	// EndWith are the outcomes that end the hold, as the CI system says
	// them (Concourse: succeeded, failed, errored, aborted); none for a
	// hold that outlives its build (handed on to a later job).
	EndWith []string `json:"end_with,omitempty" yaml:"end_with,omitempty"`
}

// Outcomes are the outcomes of a finished Concourse build, which a hold
// may end with.
var Outcomes = []string{"succeeded", "failed", "errored", "aborted"}

// DefaultEndWith are the outcomes a hold ends with when it asks to end
// with its build without naming them: the builds that did not run their
// steps to the end, and so may not have given it back.
var DefaultEndWith = []string{"aborted", "errored"}

// Gone is the outcome of a build the CI system no longer knows (its
// pipeline destroyed): every build-bound hold ends with it.
const Gone = "gone"

// CheckEndWith reports whether outcomes are outcomes a hold may end with.
func CheckEndWith(outcomes []string) error {
	for _, o := range outcomes {
		if !slices.Contains(Outcomes, o) {
			return fmt.Errorf("%q is not a build outcome: end_with_build names some of %s (or is true, for %s)",
				o, strings.Join(Outcomes, ", "), strings.Join(DefaultEndWith, " and "))
		}
	}
	return nil
}

// Ends reports whether a hold of b ends when its build finished as
// outcome.
func (b *Build) Ends(outcome string) bool {
	return b != nil && len(b.EndWith) > 0 && (outcome == Gone || slices.Contains(b.EndWith, outcome))
}

// String says which build, for a person: "build 17 (main/deploy/prod #3)".
func (b *Build) String() string {
	s := fmt.Sprintf("build %d", b.ID)
	if b.Job != "" {
		s += " (" + strings.Join(slices.DeleteFunc([]string{b.Team, b.Pipeline, b.Job}, func(p string) bool { return p == "" }), "/")
		if b.Name != "" {
			s += " #" + b.Name
		}
		s += ")"
	}
	return s
}

// EndWithBuild returns l without requestor's hold if that hold belongs to
// the build with id; ok is false when it does not (given back, or taken
// again by another build, since).
func EndWithBuild(l Lock, requestor string, id int64) (Lock, bool) {
	h, holds := l.Holder(requestor)
	if !holds || h.Build == nil || h.Build.ID != id {
		return l, false
	}
	l = l.Clone()
	l.RemoveHolder(requestor)
	return l, true
}

// appendJSON appends b as JSON, as encoding/json writes it.
func (b *Build) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, b.ID, 10)
	for _, f := range []struct{ name, value string }{{"name", b.Name}, {"job", b.Job}, {"pipeline", b.Pipeline}, {"team", b.Team}, {"url", b.URL}} {
		if f.value != "" {
			dst = append(dst, `,"`+f.name+`":`...)
			dst = AppendString(dst, f.value)
		}
	}
	if len(b.EndWith) > 0 {
		dst = append(dst, `,"end_with":[`...)
		for i, o := range b.EndWith {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendString(dst, o)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}
