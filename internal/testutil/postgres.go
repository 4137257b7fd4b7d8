package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultPostgresURL is where the PostgreSQL tests look for a server when
// LOCKER_TEST_DATABASE_URL is unset.
const DefaultPostgresURL = "postgres://127.0.0.1:5432/test?sslmode=disable"

// PostgresSchema makes a new, empty schema on the test database
// (LOCKER_TEST_DATABASE_URL, or DefaultPostgresURL), drops it when the
// test ends, and returns a URL whose search_path is that schema. Without a
// server the test is skipped, saying how to run it, unless CI is set: then
// it fails.
func PostgresSchema(tb testing.TB) string {
	tb.Helper()
	base := os.Getenv("LOCKER_TEST_DATABASE_URL")
	if base == "" {
		base = DefaultPostgresURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // CREATE SCHEMA beside other tests' DROP SCHEMA ... CASCADE took over 5 s
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		msg := "no PostgreSQL at " + base + " (" + err.Error() + "), so this PostgreSQL test did not run; " +
			"start one there, or set LOCKER_TEST_DATABASE_URL=postgres://..."
		if os.Getenv("CI") != "" {
			tb.Fatal(msg + " (CI is set, and CI must run it)")
		}
		tb.Skip(msg)
	}
	defer conn.Close(context.Background())
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	schema := "locker_test_" + hex.EncodeToString(suffix)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, base); err == nil {
			_, _ = conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
			conn.Close(ctx)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
