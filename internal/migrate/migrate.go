// Package migrate is locker migrate: it copies what a store holds at rest
// (txn.Contents) from a state file to a PostgreSQL database, or back.
package migrate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strings"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/pgstore"
	"github.com/locker-ci/locker/internal/txn"
)

const migrateUsage = `Usage: locker migrate [--force] --from SOURCE --to TARGET

Copies every held lock, the pools, the fencing token counter, each
lock's history and the outcomes remembered by Idempotency-Key (so that a
client that sends a request again after the move is answered as the
first time) from SOURCE to TARGET; each is a state file (the path
LOCKER_CONFIG names) or a PostgreSQL URL (postgres://...). TARGET must
hold no lock: a state file that does not exist or holds no lock, or a
database with no lock held or waited for. History TARGET kept already
stays, and SOURCE's events are numbered after it. SOURCE is left as it
was, and must exist. Stop the servers on both first: requests that wait
are not copied. A database that nodes still serve (they beat within the
last 5 s) is refused as SOURCE unless --force is given.

Examples:
  locker migrate --from /var/vcap/store/locker/locker.yml --to 'postgres://locker@db:5432/locker'
  locker migrate --from 'postgres://locker@db:5432/locker' --to /var/lib/locker/locker.yml
`

// ErrUsage marks a command line that is wrong: main exits 2 for it.
var ErrUsage = errors.New("usage")

// Run handles locker migrate with args (what follows "migrate").
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("locker migrate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	from := fs.String("from", "", "")
	to := fs.String("to", "", "")
	force := fs.Bool("force", false, "")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, migrateUsage)
		return nil
	} else if err != nil || *from == "" || *to == "" || fs.NArg() > 0 {
		return fmt.Errorf("%w: migrate needs --from and --to, each a state file or a postgres:// URL (locker migrate -h)", ErrUsage)
	}
	c, err := readTable(ctx, *from, *force)
	if err != nil {
		return fmt.Errorf("reading %s: %w", describe(*from), err)
	}
	if err := writeTable(ctx, *to, c); err != nil {
		return fmt.Errorf("writing %s: %w", describe(*to), err)
	}
	fmt.Fprintf(stdout, "copied %d locks, %s, %s, %s and %s (fencing tokens go on after %d) from %s to %s\n",
		len(c.Locks), advice.Plural(len(c.Pools), "pool", "pools"), advice.Plural(len(c.History), "event", "events"),
		advice.Plural(len(c.Requests), "remembered outcome", "remembered outcomes"), advice.Plural(len(c.Credentials), "credential", "credentials"),
		c.LastToken, describe(*from), describe(*to))
	return nil
}

func isDatabase(where string) bool {
	return strings.HasPrefix(where, "postgres://") || strings.HasPrefix(where, "postgresql://")
}

// describe names a source or target without a database password.
func describe(where string) string {
	if !isDatabase(where) {
		return "the state file " + where
	}
	u, err := url.Parse(where)
	if err != nil {
		return "the database (a URL that does not parse)"
	}
	return "the database " + u.Redacted()
}

// readTable reads the held locks, the pools and the last token from a
// state file (its journal replayed) or a database.
func readTable(ctx context.Context, from string, force bool) (txn.Contents, error) {
	if isDatabase(from) {
		s, err := pgstore.Open(ctx, from, "migrate", pgstore.Options{})
		if err != nil {
			return txn.Contents{}, err
		}
		defer func() { _ = s.Close(false) }()
		live, err := s.LiveNodes(ctx)
		if err != nil {
			return txn.Contents{}, err
		}
		if len(live) > 0 && !force {
			return txn.Contents{}, fmt.Errorf("%d locker nodes still serve it (%s): stop them first, so that no lock changes after the copy, or give --force to copy it as it is now",
				len(live), strings.Join(live, ", "))
		}
		return s.Export(ctx)
	}
	st, err := filestore.Read(from, atomicfile.OS{})
	var creds []access.Credential
	for _, name := range slices.Sorted(maps.Keys(st.Credentials)) {
		creds = append(creds, st.Credentials[name])
	}
	return txn.Contents{Locks: st.Locks, Pools: st.Pools, LastToken: st.LastToken,
		History: st.History, LastEvent: st.LastEvent, Requests: st.Requests, Credentials: creds}, err
}

// writeTable writes c into a target that holds no locks.
func writeTable(ctx context.Context, to string, c txn.Contents) error {
	if !isDatabase(to) {
		return filestore.Write(to, atomicfile.OS{}, c)
	}
	s, err := pgstore.Open(ctx, to, "migrate", pgstore.Options{})
	if err != nil {
		return err
	}
	defer func() { _ = s.Close(false) }()
	err = s.Import(ctx, c)
	if errors.Is(err, pgstore.ErrNotEmpty) {
		return fmt.Errorf("%w: migrate does not overwrite locks; free them, or use another database", err)
	}
	return err
}
