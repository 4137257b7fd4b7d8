package duration

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"90s", 90 * time.Second, ""},
		{"1h30m", 90 * time.Minute, ""},
		{" 10m ", 10 * time.Minute, ""},
		{"0", 0, ""},
		{"0s", 0, ""},
		{"5", 0, "5 has no unit: write 5s, 5m or 5h"},
		{"1.5", 0, "1.5 has no unit: write 1.5s, 1.5m or 1.5h"},
		{"1d", 0, "d is not a unit here: write 24h for 1d"},
		{"2w", 0, "w is not a unit here: write 336h for 2w"},
		{"-5s", 0, "-5s is negative"},
		{"soon", 0, `"soon" is not a duration`},
		{"", 0, "it is empty"},
	} {
		got, err := Parse(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Parse(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}
