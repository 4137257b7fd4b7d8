package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// credentialFigures compare the parallel workload through AUTH_USER with
// the same load through one credential of a server that has many, on a
// fresh server each, measured in alternation.
type credentialFigures struct {
	Credentials   int    `json:"credentials"`
	AuthUserRPS   figure `json:"auth_user_rps"`
	CredentialRPS figure `json:"credential_rps"`
	AuthUserCPUus figure `json:"auth_user_server_cpu_us_per_request"`
	CredentialCPU figure `json:"credential_server_cpu_us_per_request"`
}

const (
	benchAdmin     = "bench-admin"
	benchAdminPass = "bench-admin-secret-7f3a9c"
	benchCreds     = 1000
)

// benchCredentials runs the parallel workload with AUTH_USER, then through
// one of benchCreds credentials (a lock role on the workload's prefix; the
// others each on a team's prefix), cfg.runs times.
func benchCredentials(cfg config, dir string, r *report) error {
	var admin, cred []loadResult
	for i := range cfg.runs {
		res, err := authRun(cfg, dir, 2*i, 0)
		if err != nil {
			return err
		}
		admin = append(admin, res)
		if res, err = authRun(cfg, dir, 2*i+1, benchCreds); err != nil {
			return err
		}
		cred = append(cred, res)
	}
	r.Credentials = &credentialFigures{
		Credentials: benchCreds,
		AuthUserRPS: rpsFigure(admin), CredentialRPS: rpsFigure(cred),
		AuthUserCPUus: serverCPUFigure(admin), CredentialCPU: serverCPUFigure(cred),
	}
	return nil
}

// authRun starts a server with AUTH_USER and, when creds > 0, makes that
// many credentials and runs the parallel workload through the last;
// otherwise through AUTH_USER.
func authRun(cfg config, dir string, i, creds int) (loadResult, error) {
	runDir := filepath.Join(dir, fmt.Sprintf("auth-%d", i))
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return loadResult{}, err
	}
	defer func() { _ = os.RemoveAll(runDir) }()
	c := cfg
	c.serverEnv = append([]string{"AUTH_USER=" + benchAdmin, "AUTH_PASS=" + benchAdminPass}, cfg.serverEnv...)
	p, _, err := startLocker(c, runDir)
	if err != nil {
		return loadResult{}, err
	}
	user, pass := benchAdmin, benchAdminPass
	if creds > 0 {
		if pass, err = makeCredentials(p.url, creds); err != nil {
			_ = p.stop()
			return loadResult{}, err
		}
		user = fmt.Sprintf("team-%d-ci", creds-1)
	}
	u, err := url.Parse(p.url)
	if err != nil {
		_ = p.stop()
		return loadResult{}, err
	}
	u.User = url.UserPassword(user, pass) // net/http sends it as basic auth
	p.url = u.String()
	return runOnce(cfg, p, cfg.clients, ownLock("parallel"), p.stop)
}

// makeCredentials makes n credentials as AUTH_USER, each with the lock
// role on a team's prefix, the last on the workload's, and returns the
// last one's secret.
func makeCredentials(base string, n int) (string, error) {
	var (
		wg     sync.WaitGroup
		next   atomic.Int64
		failed atomic.Value
		last   atomic.Value
	)
	for range 8 {
		wg.Go(func() {
			hc := newClient(base).http
			defer hc.CloseIdleConnections()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				prefix := fmt.Sprintf("team-%d/", i)
				if i == n-1 {
					prefix = "parallel-"
				}
				body := fmt.Sprintf(`{"name": "team-%d-ci", "grants": [{"role": "lock", "prefix": %q}, {"role": "read", "prefix": "shared/"}]}`, i, prefix)
				req, err := http.NewRequest("POST", base+"/credentials", strings.NewReader(body))
				if err != nil {
					failed.Store(err)
					return
				}
				req.SetBasicAuth(benchAdmin, benchAdminPass)
				resp, err := hc.Do(req)
				if err != nil {
					failed.Store(err)
					return
				}
				var made struct {
					Secret string `json:"secret"`
				}
				err = json.NewDecoder(resp.Body).Decode(&made)
				_ = resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusCreated || made.Secret == "" {
					failed.Store(fmt.Errorf("POST /credentials (%d of %d) = %d, %v", i+1, n, resp.StatusCode, err))
					return
				}
				if i == n-1 {
					last.Store(made.Secret)
				}
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		return "", err
	}
	return last.Load().(string), nil
}
