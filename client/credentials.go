package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Credential is a credential as the server shows it: never its secret.
type Credential struct {
	Name      string    `json:"name"`                 // what it logs in as (basic auth's user)
	Grants    []Grant   `json:"grants"`               // its roles, each on a prefix
	CreatedBy string    `json:"created_by,omitempty"` // the credential that made it
	CreatedAt time.Time `json:"created_at,omitzero"`  // when it was made
	ExpiresAt time.Time `json:"expires_at,omitzero"`  // when it is refused from; zero: never
	// LastUsed is when it was last used on the node that answered.
	LastUsed time.Time `json:"last_used,omitzero"`
	// From says where it comes from: "api" (made with CreateCredential),
	// "file" (the server's credentials file) or "AUTH_USER".
	From string `json:"from"`
}

// Grant is a role on the names that start with Prefix ("" is every
// name): "read", "lock", "operate" or "admin", each including the ones
// before it. A credential's role on a name is its grant's with the
// longest prefix that the name starts with.
type Grant struct {
	Role   string `json:"role"`   // read, lock, operate or admin
	Prefix string `json:"prefix"` // the names it covers: those that start with it
}

// credentialPath is the API path of the credential called name.
func credentialPath(name string) string { return "/credentials/" + url.PathEscape(name) }

// Credentials returns every credential the server knows, by name (an
// admin's call).
func (c *Client) Credentials(ctx context.Context) ([]Credential, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	data, err := c.Do(ctx, http.MethodGet, "/credentials", nil, nil, "")
	if err != nil {
		return nil, err
	}
	var creds []Credential
	if err := json.Unmarshal(data, &creds); err != nil {
		return nil, fmt.Errorf("the locker's answer to GET /credentials is not a list of credentials: %w", err)
	}
	return creds, nil
}

// CreateCredential makes a credential called name with grants, which
// expires after expiresIn (0: never), and returns it and its secret: the
// server shows the secret this once (an admin's call).
func (c *Client) CreateCredential(ctx context.Context, name string, grants []Grant, expiresIn time.Duration) (Credential, string, error) {
	body := map[string]any{"name": name, "grants": grants}
	if expiresIn > 0 {
		body["expires_in"] = expiresIn.String()
	}
	return c.withSecret(ctx, http.MethodPost, "/credentials", body)
}

// RotateCredential gives the credential called name a new secret, and
// returns it; the old one is refused from then on (an admin's call).
func (c *Client) RotateCredential(ctx context.Context, name string) (Credential, string, error) {
	return c.withSecret(ctx, http.MethodPost, credentialPath(name)+"/rotate", nil)
}

// withSecret sends a request whose answer is a credential and its secret.
func (c *Client) withSecret(ctx context.Context, method, path string, body any) (Credential, string, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	data, err := c.Do(ctx, method, path, nil, body, "")
	if err != nil {
		return Credential{}, "", err
	}
	var reply struct {
		Credential
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(data, &reply); err != nil || reply.Secret == "" {
		return Credential{}, "", fmt.Errorf("the locker's answer to %s %s is not a credential with its secret: %s", method, path, data)
	}
	return reply.Credential, reply.Secret, nil
}

// DeleteCredential revokes the credential called name: its secret is
// refused from then on (an admin's call).
func (c *Client) DeleteCredential(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	_, err := c.Do(ctx, http.MethodDelete, credentialPath(name), nil, nil, "")
	return err
}
