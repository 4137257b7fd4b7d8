package nearest

import "testing"

func TestWord(t *testing.T) {
	commands := []string{"run", "lock", "unlock", "renew", "ls", "show", "pool", "force-unlock", "health", "migrate", "serve"}
	variables := []string{"LOCKER_CONFIG", "LOCKER_MAX_WAIT", "LOCKER_MAX_TTL", "LOCKER_DEFAULT_TTL", "LOCKER_LISTEN"}
	for _, tt := range []struct {
		word       string
		candidates []string
		want       string // "" for none
	}{
		{"lokc", commands, "lock"},    // two letters swapped
		{"lcok", commands, "lock"},    // swapped in the middle
		{"unlok", commands, "unlock"}, // one left out
		{"shwo", commands, "show"},
		{"rn", commands, "run"},
		{"forceunlock", commands, "force-unlock"},
		{"migrat", commands, "migrate"},
		{"list", commands, "ls"},
		{"deploy", commands, ""},
		{"x", commands, ""},
		{"LOCKER_MAXWAIT", variables, "LOCKER_MAX_WAIT"},
		{"LOCKER_MAX_TLL", variables, "LOCKER_MAX_TTL"},
		{"LOCKER_CONFG", variables, "LOCKER_CONFIG"},
		{"LOCKER_FOO", variables, ""},
		{"tll", []string{"ttl", "wait", "key"}, "ttl"},
		{"", commands, ""},
	} {
		got, ok := Word(tt.word, tt.candidates)
		if !ok {
			got = ""
		}
		if got != tt.want {
			t.Errorf("Word(%q) = %q, %v; want %q", tt.word, got, ok, tt.want)
		}
	}
}

func TestDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "abc", 0}, {"", "abc", 3}, {"abc", "", 3},
		{"kitten", "sitting", 3}, {"ab", "ba", 1}, {"ca", "abc", 3}, // OSA, not Damerau: "ca" -> "abc" is 3
		{"lock", "lokc", 1}, {"lock", "unlock", 2},
	} {
		if got := distance(tt.a, tt.b); got != tt.want {
			t.Errorf("distance(%q, %q) = %d; want %d", tt.a, tt.b, got, tt.want)
		}
		if got := distance(tt.b, tt.a); got != tt.want {
			t.Errorf("distance(%q, %q) = %d; want %d (it is symmetric)", tt.b, tt.a, got, tt.want)
		}
	}
}
