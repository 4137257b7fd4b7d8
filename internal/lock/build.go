package lock

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
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

// Ending says that the build ended as outcome, for a history:
// "build 17 (aborted), main/deploy/prod #3".
func (b *Build) Ending(outcome string) string {
	s := fmt.Sprintf("build %d (%s)", b.ID, outcome)
	if b.Job != "" {
		s += ", " + strings.Join(slices.DeleteFunc([]string{b.Team, b.Pipeline, b.Job}, func(p string) bool { return p == "" }), "/")
		if b.Name != "" {
			s += " #" + b.Name
		}
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

// buildExample is a request's build, for messages.
const buildExample = `"build": {"id": 17, "name": "3", "job": "deploy", "pipeline": "prod", "team": "main", "url": "https://ci.example.com/teams/main/pipelines/prod/jobs/deploy/builds/3"}, "end_with_build": ["aborted", "errored"]`

// DecodeBuild reads a request's "build" and "end_with_build" fields (raw
// JSON; nil when absent): the build the hold belongs to, and true (for
// DefaultEndWith), false, or the outcomes that end the hold.
func DecodeBuild(build, endWith []byte) (*Build, error) {
	var b Build
	if len(build) == 0 || string(build) == "null" {
		if len(endWith) > 0 && string(endWith) != "false" && string(endWith) != "null" && string(endWith) != "[]" {
			return nil, fmt.Errorf("\"end_with_build\" needs \"build\", the build the hold belongs to (the Concourse resource sends it): %s", buildExample)
		}
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(build))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil || b.ID <= 0 || dec.More() {
		return nil, fmt.Errorf("\"build\" is an object with the CI system's build ID (a whole number above 0) and, if known, its name, job, pipeline, team and url, e.g. %s (got %s)", buildExample, build)
	}
	if len(b.EndWith) > 0 {
		return nil, fmt.Errorf("the outcomes that end the hold go in \"end_with_build\", beside \"build\": %s", buildExample)
	}
	for _, s := range []string{b.Name, b.Job, b.Pipeline, b.Team, b.URL} {
		if len(s) > 1024 || !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
			return nil, fmt.Errorf("\"build\" has a field over 1024 bytes long, not valid UTF-8, or with a control character: %q", s)
		}
	}
	switch string(endWith) {
	case "", "null", "false":
	case "true":
		b.EndWith = DefaultEndWith
	default:
		if err := json.Unmarshal(endWith, &b.EndWith); err != nil {
			return nil, fmt.Errorf("\"end_with_build\" is true (for %s), false, or a list of the outcomes that end the hold, some of %s (got %s)",
				strings.Join(DefaultEndWith, " and "), strings.Join(Outcomes, ", "), endWith)
		}
		if err := CheckEndWith(b.EndWith); err != nil {
			return nil, err
		}
		if len(b.EndWith) == 0 {
			b.EndWith = nil
		}
	}
	return &b, nil
}
