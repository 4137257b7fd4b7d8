package cli

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/locker-ci/locker/client"
	"github.com/locker-ci/locker/internal/access"
)

const credentialUsage = `Usage: locker credential create NAME --grant ROLE:PREFIX... [--expires-in D]
       locker credential ls
       locker credential rotate NAME
       locker credential rm NAME
       locker credential hash

A credential is what a client presents (its name and secret with basic
auth: LOCKER_USER and LOCKER_PASSWORD, the resource's source.username and
source.password; or its secret alone as Authorization: Bearer). Each of
its grants is a role on the names that start with a prefix, the longest
prefix deciding: read (see locks, pools, histories), lock (take and give
back), operate (force free, change pools), admin (everything, and
credentials). An admin of every name runs these, but for hash.

create makes one and prints its secret, shown this once; ls lists them,
never a secret; rotate prints a new secret, and the old one is refused
from then on; rm revokes one at once. hash prints a new secret and its
hash, for the credentials file (LOCKER_CREDENTIALS_FILE), which holds
hashes only.

  --grant ROLE:PREFIX  a grant, e.g. lock:team-a/ (repeat it; read: is
                       every name)
  --expires-in D       it is refused after D, e.g. 2160h (default: never)

Examples:
  locker credential create team-a-ci --grant lock:team-a/ --grant read:
  locker credential rotate team-a-ci
` + connectionHelp

// cmdCredential handles locker credential.
func cmdCredential(e *env, args []string) int {
	var grants names
	e.flags.Var(&grants, "grant", "")
	expiresIn := durationFlag{name: "expires-in"}
	e.durationVar(&expiresIn, "")
	pos, code, ok := e.parseUpTo(args, 2)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return e.usageError("create, ls, rotate, rm or hash is missing, e.g. locker credential ls")
	}
	sub, rest := pos[0], pos[1:]
	want := map[string]int{"create": 1, "ls": 0, "rotate": 1, "rm": 1, "hash": 0}
	n, known := want[sub]
	switch {
	case !known:
		return e.usageError("%q is not one of create, ls, rotate, rm and hash%s", sub, didYouMean(sub, slices.Collect(maps.Keys(want))))
	case len(rest) != n:
		return e.usageError("locker credential %s takes %d argument(s), not %d", sub, n, len(rest))
	case sub == "create" && len(grants) == 0:
		return e.usageError("a credential needs at least one --grant ROLE:PREFIX, e.g. --grant lock:team-a/")
	}
	if sub == "hash" {
		secret, hash := access.NewSecret()
		fmt.Fprintf(e.stdout, "secret: %s\nhash: %s\n", secret, hash)
		return exitOK
	}
	var parsed []client.Grant
	for _, g := range grants {
		role, prefix, ok := strings.Cut(g, ":")
		if _, err := access.ParseRole(role); !ok || err != nil {
			return e.usageError("--grant %q is not ROLE:PREFIX with a role of read, lock, operate or admin, e.g. lock:team-a/", g)
		}
		parsed = append(parsed, client.Grant{Role: role, Prefix: prefix})
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	switch sub {
	case "create", "rotate":
		var c client.Credential
		var secret string
		var err error
		if sub == "create" {
			c, secret, err = e.client.CreateCredential(e.ctx, rest[0], parsed, expiresIn.d)
		} else {
			c, secret, err = e.client.RotateCredential(e.ctx, rest[0])
		}
		if err != nil {
			return e.fail(err)
		}
		fmt.Fprintf(e.stdout, "credential %s: %s\nsecret: %s\n(shown this once: keep it where the clients read it, e.g. CredHub or your CI's secrets)\n",
			c.Name, grantsText(c.Grants), secret)
	case "ls":
		creds, err := e.client.Credentials(e.ctx)
		if err != nil {
			return e.fail(err)
		}
		now := time.Now()
		w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tGRANTS\tFROM\tCREATED\tLAST USED\tEXPIRES")
		for _, c := range creds {
			expires := "never"
			if !c.ExpiresAt.IsZero() {
				expires = c.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", oneLine(c.Name), oneLine(grantsText(c.Grants)), c.From,
				ago(now, c.CreatedAt), ago(now, c.LastUsed), expires)
		}
		_ = w.Flush()
	case "rm":
		if err := e.client.DeleteCredential(e.ctx, rest[0]); err != nil {
			return e.fail(err)
		}
		fmt.Fprintf(e.stdout, "credential %s revoked; its secret is refused from now on\n", rest[0])
	}
	return exitOK
}

// grantsText says a credential's grants: "lock on team-a/, read on every
// name".
func grantsText(grants []client.Grant) string {
	parts := make([]string, len(grants))
	for i, g := range grants {
		on := "every name"
		if g.Prefix != "" {
			on = g.Prefix
		}
		parts[i] = g.Role + " on " + on
	}
	return strings.Join(parts, ", ")
}
