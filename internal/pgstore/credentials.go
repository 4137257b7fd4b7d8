package pgstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/txn"
)

// credentialsChannel is the LISTEN/NOTIFY channel on which a node tells
// the others that a credential changed: they read the credentials again
// (CredentialsChanged), so that a revoked one is refused everywhere at
// once; each also reads them every heartbeat, in case a notification was
// lost with its connection.
const credentialsChannel = "locker_credentials"

// Credentials returns every credential, by name.
func (s *Store) Credentials(ctx context.Context) (map[string]access.Credential, error) {
	creds, err := readCredentials(ctx, s.pool)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return creds, nil
}

// readCredentials reads every credential through q.
func readCredentials(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (map[string]access.Credential, error) {
	rows, err := q.Query(ctx, "SELECT name, credential FROM locker_credentials")
	if err != nil {
		return nil, err
	}
	creds := map[string]access.Credential{}
	for rows.Next() {
		var name string
		var raw []byte
		if err := rows.Scan(&name, &raw); err != nil {
			return nil, err
		}
		var c access.Credential
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("credential %q in the database: %w", name, err)
		}
		creds[name] = c
	}
	return creds, rows.Err()
}

// UpdateCredential changes the credential called name as change says, in
// a transaction of its own under the credential's row lock, and tells
// the other nodes.
func (s *Store) UpdateCredential(ctx context.Context, name string, change txn.ChangeCredential) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var c access.Credential
	var raw []byte
	err = tx.QueryRow(ctx, "SELECT credential FROM locker_credentials WHERE name = $1 FOR UPDATE", name).Scan(&raw)
	found := err == nil
	switch {
	case err == pgx.ErrNoRows:
	case err != nil:
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	default:
		if err := json.Unmarshal(raw, &c); err != nil {
			return fmt.Errorf("credential %q in the database: %w", name, err)
		}
	}
	next, err := change(c, found)
	switch {
	case err != nil || next == nil && !found:
		return err
	case next == nil:
		_, err = tx.Exec(ctx, "DELETE FROM locker_credentials WHERE name = $1", name)
	default:
		if raw, err = json.Marshal(next); err == nil {
			_, err = tx.Exec(ctx, `INSERT INTO locker_credentials (name, credential) VALUES ($1, $2)
				ON CONFLICT (name) DO UPDATE SET credential = excluded.credential`, name, raw)
		}
	}
	if err == nil {
		_, err = tx.Exec(ctx, "SELECT pg_notify($1, '')", credentialsChannel)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("%w: %w", txn.ErrUncertain, err)
	}
	if s.onCredentials != nil {
		s.onCredentials()
	}
	return nil
}
