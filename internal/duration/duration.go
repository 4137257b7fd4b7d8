// Package duration reads the durations people write for waits, leases and
// expiries: one reading for the API's fields and the command line's
// flags. A duration is Go's ("90s", "10m", "1h30m"); the mistakes people
// make are named with what to write instead: a number without a unit, and
// days or weeks, which Go's durations do not have.
package duration

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Parse reads s as a duration that is not negative. Its error says what
// is wrong with s and what to write, without naming the field: the caller
// does.
func Parse(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("it is empty")
	}
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n == 0 {
			return 0, nil
		}
		return 0, fmt.Errorf("%s has no unit: write %ss, %sm or %sh", s, s, s, s)
	}
	for unit, hours := range map[string]int{"d": 24, "w": 7 * 24} {
		if n, ok := strings.CutSuffix(s, unit); ok {
			if days, err := strconv.Atoi(n); err == nil && days > 0 {
				return 0, fmt.Errorf("%s is not a unit here: write %dh for %s", unit, days*hours, s)
			}
		}
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is not a duration: write a number and a unit (s, m or h), e.g. 90s, 10m or 1h30m", s)
	case d < 0:
		return 0, fmt.Errorf("%s is negative", s)
	}
	return d, nil
}
