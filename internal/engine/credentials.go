package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/advice"
)

// Credentials made over the API: kept by the store with the locks (the
// state file and its journal, or a table every node reads), each its
// secret's hash, never the secret. Who may do what with them is the
// API's to say (internal/access); the engine keeps them.

var (
	// ErrCredentialExists: a credential of that name is there already.
	ErrCredentialExists = errors.New("credential exists")
	// ErrNoCredential: there is no credential of that name.
	ErrNoCredential = errors.New("no such credential")
)

// Credentials returns every credential kept, by name.
func (e *Engine) Credentials(ctx context.Context) (map[string]access.Credential, error) {
	ctx, cancel := context.WithTimeout(ctx, changeTimeout)
	defer cancel()
	creds, err := e.store.Credentials(ctx)
	if err != nil {
		return nil, e.fail("", err)
	}
	return creds, nil
}

// CreateCredential keeps c, a credential no other has the name of.
func (e *Engine) CreateCredential(ctx context.Context, c access.Credential) error {
	err := e.changeCredential(ctx, c.Name, func(old access.Credential, ok bool) (*access.Credential, error) {
		if ok {
			return nil, fmt.Errorf("%w: a credential called %q was made by %s at %s; give another name, or rotate that one's secret",
				ErrCredentialExists, c.Name, old.CreatedBy, old.CreatedAt.Format("2006-01-02T15:04:05Z07:00"))
		}
		return &c, nil
	})
	if err == nil {
		e.log.Info("credential created", "credential", c.Name, "by", c.CreatedBy)
	}
	return err
}

// DeleteCredential revokes the credential called name, by who.
func (e *Engine) DeleteCredential(ctx context.Context, name, who string) error {
	err := e.changeCredential(ctx, name, func(_ access.Credential, ok bool) (*access.Credential, error) {
		if !ok {
			return nil, noCredential(name)
		}
		return nil, nil
	})
	if err == nil {
		e.log.Info("credential revoked", "credential", name, "by", who)
	}
	return err
}

// RotateCredential gives the credential called name the secret whose
// hash is hash, in place of its own, and returns it.
func (e *Engine) RotateCredential(ctx context.Context, name, hash, who string) (access.Credential, error) {
	var c access.Credential
	err := e.changeCredential(ctx, name, func(old access.Credential, ok bool) (*access.Credential, error) {
		if !ok {
			return nil, noCredential(name)
		}
		c = old
		c.Hash = hash
		return &c, nil
	})
	if err == nil {
		e.log.Info("credential's secret rotated", "credential", name, "by", who)
	}
	return c, err
}

// changeCredential runs change over the credential called name in the
// store, within changeTimeout.
func (e *Engine) changeCredential(ctx context.Context, name string, change func(access.Credential, bool) (*access.Credential, error)) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	if err := e.store.UpdateCredential(ctx, name, change); err != nil {
		return e.fail(name, err)
	}
	return nil
}

// noCredential says there is no credential called name.
func noCredential(name string) error {
	return fmt.Errorf("%w: there is no credential called %q; %s", ErrNoCredential, name, advice.Credentials)
}
