package humane

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-3 * time.Second, "0 s"},
		{0, "0 s"},
		{42*time.Second + 900*time.Millisecond, "42 s"},
		{12*time.Minute + 59*time.Second, "12 min"},
		{3*time.Hour + 5*time.Minute, "3 h 5 min"},
		{52 * time.Hour, "2 d 4 h"},
	} {
		if got := Duration(tc.d); got != strings.ReplaceAll(tc.want, " ", "\u00a0") {
			t.Errorf("Duration(%v) = %q; want %q", tc.d, got, tc.want)
		}
	}
}

func TestLink(t *testing.T) {
	for note, want := range map[string]bool{
		"https://ci.example.com/builds/42": true,
		"http://ci:8080/b/1":               true,
		"javascript:alert(1)":              false,
		"data:text/html,<b>x</b>":          false,
		"//ci.example.com/builds/42":       false,
		"ci.example.com/builds/42":         false,
		"https://":                         false,
		"deploying v1.2":                   false,
	} {
		if got := Link(note) != ""; got != want {
			t.Errorf("Link(%q) = %v; want %v", note, got, want)
		}
	}
}

func TestMark(t *testing.T) {
	for _, tc := range []struct {
		s, filter string
		want      []Part
	}{
		{"prod", "", []Part{{"prod", false}}},
		{"prod-db", "PROD", []Part{{"prod", true}, {"-db", false}}},
		{"a-prod-prod", "prod", []Part{{"a-", false}, {"prod", true}, {"-", false}, {"prod", true}}},
		{"staging", "prod", []Part{{"staging", false}}},
		{"İstanbul", "i", []Part{{"İstanbul", false}}}, // ToLower changes its length: left unmarked
	} {
		if got := Mark(tc.s, tc.filter); !slices.Equal(got, tc.want) {
			t.Errorf("Mark(%q, %q) = %v; want %v", tc.s, tc.filter, got, tc.want)
		}
	}
}
