// Package deploy holds the tests of the server's container image and
// systemd unit: what can be checked here without a container engine or a
// running systemd. The BOSH release is tested in ../bosh.
package deploy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"debug/elf"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testcert"
	"github.com/locker-ci/locker/internal/testutil"
)

// dockerfile is the server's Dockerfile, at the repository's root.
const dockerfile = "../Dockerfile"

// goBuild finds the Dockerfile's go build line, with its environment.
var goBuild = regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 go build .* -o )/out/locker( \.)$`)

// TestDockerfileBinary builds the binary the way the Dockerfile does (its
// own RUN line, CGO off, the VERSION build argument), checks that it is
// static and says its version, and starts it with the image's environment
// and health check.
func TestDockerfileBinary(t *testing.T) {
	text := string(testutil.ReadFile(t, dockerfile))
	m := goBuild.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("%s has no `RUN CGO_ENABLED=0 go build ... -o /out/locker .` line", dockerfile)
	}
	bin := filepath.Join(t.TempDir(), "locker")
	build := exec.Command("sh", "-c", m[1]+bin+m[2])
	build.Dir = ".."
	build.Env = append(os.Environ(), "VERSION=v9.8.7-test") // as docker build --build-arg VERSION=v9.8.7-test
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build.Args[2], err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary needs a dynamic loader: it would not run on a static base image")
		}
	}
	if out, err := exec.Command(bin, "--version").Output(); err != nil || string(out) != "locker v9.8.7-test\n" {
		t.Errorf("locker --version = %q, %v; want the build argument VERSION, v9.8.7-test", out, err)
	}
	for _, want := range []string{"ARG VERSION=dev", "USER nonroot", "VOLUME /data", `HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/locker", "health"]`,
		`ENTRYPOINT ["/usr/local/bin/locker"]`, `CMD ["serve"]`} {
		if !strings.Contains(text, want) {
			t.Errorf("%s lacks %q", dockerfile, want)
		}
	}

	// The image's environment, with the volume in a temp directory and a
	// free port, then the health check the image runs.
	data := t.TempDir()
	env := []string{"PORT=" + strconv.Itoa(testutil.FreePort(t))}
	for _, kv := range dockerEnv(t, text) {
		if strings.HasPrefix(kv, "PORT=") {
			continue
		}
		env = append(env, strings.Replace(kv, "=/data/", "="+data+"/", 1))
	}
	s := testutil.StartServer(t, bin, env...)
	health := exec.Command(bin, "health")
	health.Env = env
	if out, err := health.CombinedOutput(); err != nil {
		t.Errorf("locker health, the image's HEALTHCHECK: %v\n%s", err, out)
	}
	if status := testutil.HTTPDo(t, s.URL, "PUT", "/lock/prod", `{"key": "k"}`); status != http.StatusOK {
		t.Errorf("PUT = %d", status)
	}
	if _, err := os.Stat(filepath.Join(data, "locker.yml.journal")); err != nil {
		t.Errorf("the locks are not kept in the volume: %v", err)
	}
}

// dockerEnv returns the KEY=VALUE pairs of the Dockerfile's ENV lines.
func dockerEnv(t *testing.T, text string) []string {
	t.Helper()
	var env []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "ENV "); ok {
			env = append(env, strings.Fields(rest)...)
		}
	}
	if len(env) == 0 {
		t.Fatal("the Dockerfile sets no ENV")
	}
	return env
}

// TestSystemdUnit checks deploy/locker.service with systemd-analyze verify
// (with ExecStart pointing at a built binary: verify checks it exists),
// then starts that binary with the unit's environment, HTTPS from a
// credentials directory as LoadCredential= makes it, and the sample
// locker.env: refused with its placeholder password, serving with one of
// its own.
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian's systemd package), so the unit was not verified")
	}
	bin := filepath.Join(t.TempDir(), "locker")
	if out, err := testutil.GoBuild(bin, "github.com/locker-ci/locker"); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	unit := string(testutil.ReadFile(t, "locker.service"))
	if !strings.Contains(unit, "ExecStart=/usr/local/bin/locker serve\n") {
		t.Fatal("locker.service does not start /usr/local/bin/locker serve")
	}
	for _, want := range []string{"DynamicUser=yes", "StateDirectory=locker", "ProtectSystem=strict", "EnvironmentFile=-/etc/locker/locker.env", "NoNewPrivileges=yes"} {
		if !strings.Contains(unit, want+"\n") {
			t.Errorf("locker.service lacks %s", want)
		}
	}
	// The HTTPS lines, commented out as shipped, are verified too.
	withTLS := strings.NewReplacer("#LoadCredential=", "LoadCredential=", "#Environment=SSL_CERT=", "Environment=SSL_CERT=").Replace(unit)
	if !strings.Contains(withTLS, "\nLoadCredential=key.pem:/etc/locker/key.pem\n") || !strings.Contains(withTLS, "\nEnvironment=SSL_CERT=%d/cert.pem SSL_KEY=%d/key.pem\n") {
		t.Fatal("locker.service lacks the commented LoadCredential= lines for the certificate and key")
	}
	copyPath := filepath.Join(t.TempDir(), "locker.service")
	if err := os.WriteFile(copyPath, []byte(strings.Replace(withTLS, "ExecStart=/usr/local/bin/locker", "ExecStart="+bin, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	// verify exits 0 on unknown keys and other warnings: any output fails.
	if out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// The unit's environment as systemd makes it, with %d the credentials
	// directory the key is copied to, and the sample locker.env.
	state, creds := t.TempDir(), t.TempDir()
	certFile, keyFile, certPEM := testcert.Write(t, creds)
	if certFile != filepath.Join(creds, "cert.pem") || keyFile != filepath.Join(creds, "key.pem") {
		t.Fatalf("testcert wrote %s and %s; the unit reads cert.pem and key.pem", certFile, keyFile)
	}
	env := []string{"PORT=" + strconv.Itoa(testutil.FreePort(t))}
	for _, line := range strings.Split(withTLS, "\n") {
		if kvs, ok := strings.CutPrefix(line, "Environment="); ok {
			for _, kv := range strings.Fields(kvs) {
				env = append(env, strings.NewReplacer("=/var/lib/locker/", "="+state+"/", "%d", creds).Replace(kv))
			}
		}
	}
	for _, line := range strings.Split(string(testutil.ReadFile(t, "locker.env")), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "PORT=") {
			env = append(env, line)
		}
	}

	// As shipped, the password is a placeholder, which the server refuses.
	start := exec.Command(bin, "serve")
	start.Env = env
	out, err := start.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "AUTH_PASS is \"change-me\", the placeholder") {
		t.Errorf("locker serve with locker.env as shipped: %v\n%s; want a refusal of the placeholder password", err, out)
	}
	env = append(env, "AUTH_PASS=a-password-of-our-own") // the last one counts
	s := testutil.StartServer(t, bin, env...)
	if !strings.HasPrefix(s.URL, "https://") {
		t.Errorf("the server serves %s; want HTTPS from the credentials directory", s.URL)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(certPEM))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	if resp, err := c.Get(s.URL + "/locks"); err != nil {
		t.Errorf("GET /locks over HTTPS: %v", err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /locks without credentials = %d; want 401 (locker.env turns auth on)", resp.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(state, "locker.yml")); err != nil {
		t.Errorf("the state file is not in the StateDirectory: %v", err)
	}
}
