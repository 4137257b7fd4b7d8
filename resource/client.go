package resource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/locker-ci/locker/client"
	"github.com/locker-ci/locker/internal/advice"
)

// tlsAdvice ends a certificate error: how a pipeline trusts the server.
const tlsAdvice = "set source.ca_cert to the CA's certificate (PEM), or source.skip_ssl_validation: true to trust any (not recommended)"

// terms say the advice in the server's messages in a pipeline's words.
var terms = advice.Terms{
	advice.Wait:        "leave params.timeout out, or raise it, to wait for it",
	advice.WaitForThem: "leave params.timeout out, or raise it, to wait for them",
	advice.Take:        "take it again with lock_op: lock",
	advice.ReleaseKey:  "params.key must be the key the lock was taken with",
	advice.Auth:        "set source.username and source.password to a locker credential's name and secret (or its AUTH_USER and AUTH_PASS)",
	advice.RenewTTL:    "set params.ttl",
	advice.ShorterTTL:  "set a shorter params.ttl",
	advice.Limit:       "set params.limit to ",
	advice.Pools:       "`locker pool ls` lists them, and `locker pool set POOL MEMBER...` makes one",
}

// newClient returns the shared locker client for src, which Validate
// has checked.
func newClient(src Source) (*client.Client, error) {
	return client.New(client.Config{URL: src.LockerURI, User: src.Username, Password: src.Password,
		CACert: []byte(src.CACert), Insecure: src.SkipSSLValidation, TLSAdvice: tlsAdvice, Rewrite: terms.Replace})
}

// version is the lock's state as a Concourse version: it changes whenever
// the lock changes hands (the token) or its holders' counts change.
func version(l client.Lock) Version {
	h := sha256.New()
	fmt.Fprintf(h, "%q\n", l.Key)
	for _, r := range slices.Sorted(maps.Keys(l.LockedBy)) {
		fmt.Fprintf(h, "%q %d\n", r, l.LockedBy[r])
	}
	return Version{Ref: fmt.Sprintf("%d:%s", l.Token, hex.EncodeToString(h.Sum(nil))[:16])}
}

// poolVersion is a pool's state as a Concourse version: it changes
// whenever one of its members changes hands.
func poolVersion(p client.PoolInfo) Version {
	h := sha256.New()
	for _, m := range slices.Sorted(maps.Keys(p.Members)) {
		fmt.Fprintf(h, "%q %s\n", m, version(p.Members[m]).Ref)
	}
	return Version{Ref: "0:" + hex.EncodeToString(h.Sum(nil))[:16]}
}

// getPool returns the source's pool as a version, and its JSON.
func getPool(ctx context.Context, src Source) (Version, []byte, error) {
	c, err := newClient(src)
	if err != nil {
		return Version{}, nil, err
	}
	p, err := c.Pool(ctx, src.Pool)
	if err != nil {
		return Version{}, nil, err
	}
	return poolVersion(p), p.Raw, nil
}

// getLock returns the lock the source names, and that name.
func getLock(ctx context.Context, src Source) (client.Reply, string, error) {
	name, err := lockName(ctx, src)
	if err != nil {
		return client.Reply{}, "", err
	}
	c, err := newClient(src)
	if err != nil {
		return client.Reply{}, "", err
	}
	l, err := c.Get(ctx, name)
	return l, name, err
}

// lockName returns the lock the source names: lock_name, or the name of
// the BOSH director at bosh_lock.
func lockName(ctx context.Context, src Source) (string, error) {
	if src.LockName != "" {
		return src.LockName, nil
	}
	ctx, cancel := context.WithTimeout(ctx, client.RequestTimeout)
	defer cancel()
	u := strings.TrimRight(src.BoshLock, "/") + "/info"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", fmt.Errorf("source.bosh_lock: %w", err)
	}
	t, err := client.NewTransport([]byte(src.CACert), src.SkipSSLValidation)
	if err != nil {
		return "", fmt.Errorf("source.ca_cert: %w", err)
	}
	resp, err := (&http.Client{Transport: t}).Do(req)
	if err != nil {
		return "", fmt.Errorf("source.bosh_lock: asking the BOSH director for its name: %w (a director with a self-signed certificate needs source.ca_cert or skip_ssl_validation)", err)
	}
	defer resp.Body.Close()
	var info struct {
		Name string `json:"name"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("source.bosh_lock: GET %s answered %s", u, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&info); err != nil || info.Name == "" {
		return "", fmt.Errorf("source.bosh_lock: GET %s did not give a director name", u)
	}
	return info.Name, nil
}
