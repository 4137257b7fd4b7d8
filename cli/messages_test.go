package cli_test

import (
	"strings"
	"testing"
)

// TestMessages runs the command line against a real server, one case
// after another, and compares what it says with the exact text: each
// message is in the command line's own terms (flags, commands,
// LOCKER_ variables), never the API's (?wait=, PUT, curl -u).
func TestMessages(t *testing.T) {
	s := server(t)
	c := newClient(t, s)
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		// Parsing: connection flags go anywhere; typos get the nearest.
		{[]string{"--url", s.URL, "lock", "prod", "--key", "a"}, 0, "1\n", ""},
		{[]string{"--url=" + s.URL, "show", "prod"}, 0, "-", ""}, // "-": stdout not compared
		{[]string{"lokc", "cli1", "--key", "k1"}, 2, "", "locker: unknown command \"lokc\"; did you mean lock? (locker help lists them)\n"},
		{[]string{"help", "unlokc"}, 2, "", "locker help: unknown command \"unlokc\"; did you mean unlock? (locker help lists them)\n"},
		{[]string{"--port=3000", "ls"}, 2, "", "locker: unknown flag --port=3000 before the command: the server reads its settings from the environment (locker serve -h lists them), and each command has its own flags (locker help COMMAND)\n"},
		{[]string{"--url"}, 2, "", "locker: --url needs a value, e.g. --url https://locker.example.com:8910\n"},
		{[]string{"--insecure"}, 2, "", "locker: the command is missing, e.g. locker --url https://locker.example.com:8910 ls (locker help lists them)\n"},
		{[]string{"--url", s.URL, "serve"}, 2, "", "locker: --url, --ca-cert and --insecure are the client's; locker serve reads its settings from the environment (locker serve -h)\n"},
		{[]string{"lock", "prod", "--key", "a", "--tll", "5m"}, 2, "",
			"locker lock: unknown flag --tll; did you mean --ttl?\nUsage: locker lock NAME... --key K [--wait D] [--ttl D] [--note TEXT] [--lock-by R] [--limit N] [--priority P] [--supersede] [--conflict-exit-code N]\n(locker lock -h for more)\n"},
		{[]string{"pool", "lst"}, 2, "", "locker pool: \"lst\" is not one of set, ls, show, rm and claim; did you mean ls?\nUsage: locker pool set POOL MEMBER...\n(locker pool -h for more)\n"},
		{[]string{"credential", "rotat", "x"}, 2, "", "locker credential: \"rotat\" is not one of create, ls, rotate, rm and hash; did you mean rotate?\nUsage: locker credential create NAME --grant ROLE:PREFIX... [--expires-in D]\n(locker credential -h for more)\n"},
		{[]string{"lock", "prod", "--key"}, 2, "",
			"locker lock: flag needs an argument: --key\nUsage: locker lock NAME... --key K [--wait D] [--ttl D] [--note TEXT] [--lock-by R] [--limit N] [--priority P] [--supersede] [--conflict-exit-code N]\n(locker lock -h for more)\n"},

		// Refusals: who holds it, and the flag that waits.
		{[]string{"lock", "prod", "--key", "b"}, 75, "", "locker lock: \"prod\" is held with key \"a\" by a (1); --wait 5m waits for it\n"},
		{[]string{"lock", "prod", "--key", "b", "--conflict-exit-code", "9"}, 9, "", "locker lock: \"prod\" is held with key \"a\" by a (1); --wait 5m waits for it\n"},
		{[]string{"run", "prod", "--wait", "0", "--conflict-exit-code", "0", "--", "true"}, 2, "",
			"locker run: --conflict-exit-code must be an exit code from 1 to 255, e.g. 75 (got \"0\"; 0 would say the lock was taken)\nUsage: locker run NAME [--key K] [--ttl D] [--wait D] [--note TEXT] [--lock-by R] [--grace D] [--limit N] [--priority P] [--supersede] -- CMD [ARGS...]\n(locker run -h for more)\n"},
		{[]string{"run", "prod", "--wait", "0", "--", "true"}, 75, "", "locker run: \"prod\" is held with key \"a\" by a (1); --wait 5m waits for it\n"},
		{[]string{"unlock", "prod", "--key", "b"}, 1, "", "locker unlock: \"prod\" is held with key \"a\" by a (1); --key must be the key the lock was taken with\n"},
		{[]string{"unlock", "prod", "--key", "a", "--lock-by", "x"}, 1, "", "locker unlock: nothing given back: the requestor \"x\" holds no count of prod; nothing released, still held by a (1)\n"},

		// Renewals: the flag a renewal needs, the command that takes the lock.
		{[]string{"renew", "prod", "--key", "a"}, 2, "", "locker renew: the locker answered 400 Bad Request: the server has no default lease (LOCKER_DEFAULT_TTL), so say how long: --ttl, e.g. --ttl 10m\n"},
		{[]string{"renew", "prod", "--key", "b", "--ttl", "1m"}, 1, "", "locker renew: b holds nothing on \"prod\" with key \"b\", so there is no lease to renew; take it again with locker lock\n"},
		{[]string{"lock", "x", "--key", "a", "--ttl", "1000h"}, 2, "", "locker lock: the locker answered 400 Bad Request: ttl is 1000h0m0s, over LOCKER_MAX_TTL (168h0m0s); ask for a shorter --ttl, and renew it with locker renew\n"},

		// Limits and pools.
		{[]string{"lock", "shared", "--key", "a", "--limit", "2"}, 0, "2\n", ""},
		{[]string{"lock", "shared", "--key", "a", "--lock-by", "b", "--limit", "3"}, 2, "", "locker lock: the locker answered 409 Conflict: limit differs: \"shared\" is held under a limit of 2 holders, set by the request that took it; pass --limit 2, or no limit, to share it\n"},
		{[]string{"run", "--pool", "nope", "--", "true"}, 2, "", "locker run: the locker answered 404 Not Found: no such pool: there is no pool called \"nope\"; locker pool ls lists them, and locker pool set POOL MEMBER... makes one\n"},

		// Credentials and servers that cannot be reached.
		{[]string{"ls", "--url", "http://127.0.0.1:1"}, 2, "", "locker ls: cannot reach the locker at http://127.0.0.1:1 (connect: connection refused)\n"},
	} {
		r := c.run(t, tc.args...)
		if r.code != tc.code || r.stderr != tc.stderr || (tc.stdout != "-" && r.stdout != tc.stdout) {
			t.Errorf("locker %q:\n got %v\nwant exit %d, stdout %q, stderr %q", tc.args, r, tc.code, tc.stdout, tc.stderr)
		}
	}

	// Without credentials: the variables that hold them.
	cmd, _, stderr := c.command(lockerBin, "ls")
	cmd.Env = append(cmd.Env, "LOCKER_PASSWORD=wrong")
	if err := cmd.Run(); err == nil || stderr.String() != "locker ls: the locker answered 401 Unauthorized: authentication required: set LOCKER_USER and LOCKER_PASSWORD to a credential's name and secret (or the server's AUTH_USER and AUTH_PASS)\n" {
		t.Errorf("locker ls with a wrong password: %v, %q", err, stderr)
	}
	if r := c.run(t, "ls"); !strings.HasPrefix(r.stdout, "NAME  ") || !strings.Contains(r.stdout, "prod") {
		t.Errorf("locker ls = %v; want the table", r)
	}
}

// TestHelp: locker help, -h and --help list the client's commands and
// the server's (serve, migrate); locker serve -h lists the settings.
func TestHelp(t *testing.T) {
	c := client{url: "http://127.0.0.1:1", dir: t.TempDir()}
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"--url", "http://x", "--help"}} {
		r := c.run(t, args...)
		for _, want := range []string{"locker serve ", "locker migrate ", "  run ", "  lock ", "  pool ", "The connection flags go before the command or after it."} {
			if r.code != 0 || !strings.Contains(r.stdout, want) {
				t.Errorf("locker %q = %v; want exit 0 and %q in the help", args, r, want)
			}
		}
	}
	if r := c.run(t, "serve", "-h"); r.code != 0 || !strings.Contains(r.stdout, "LOCKER_CONFIG") || !strings.Contains(r.stdout, "AUTH_PASS") {
		t.Errorf("locker serve -h = %v; want the server's settings", r)
	}
	if r := c.run(t, "help", "migrate"); r.code != 0 || r.stdout != "locker migrate has its own help: locker migrate -h\n" {
		t.Errorf("locker help migrate = %v", r)
	}
}
