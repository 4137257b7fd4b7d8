// Package bosh holds the tests of the BOSH release in this directory: its
// layout, its templates rendered with Ruby's ERB as the director renders
// them, a server started from what they rendered, and the package's
// compilation without network. (The bosh CLI cannot be installed here, so
// bosh create-release does not run.)
package bosh

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v2"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/keyring"
	"github.com/locker-ci/locker/internal/testcert"
	"github.com/locker-ci/locker/internal/testutil"
)

// jobSpec is the part of a job's spec the tests read.
type jobSpec struct {
	Name        string                    `yaml:"name"`
	Description string                    `yaml:"description"`
	Templates   map[string]string         `yaml:"templates"`
	Packages    []string                  `yaml:"packages"`
	Properties  map[string]map[string]any `yaml:"properties"`
	Provides    []struct {
		Name       string   `yaml:"name"`
		Type       string   `yaml:"type"`
		Properties []string `yaml:"properties"`
	} `yaml:"provides"`
}

// packageSpec is the part of a package's spec the tests read.
type packageSpec struct {
	Name         string   `yaml:"name"`
	Dependencies []string `yaml:"dependencies"`
	Files        []string `yaml:"files"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(testutil.ReadFile(t, path), v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestReleaseLayout checks the release is laid out as the BOSH docs
// describe, and that every file a spec names exists.
func TestReleaseLayout(t *testing.T) {
	var final struct {
		Name      string         `yaml:"name"`
		Blobstore map[string]any `yaml:"blobstore"`
	}
	readYAML(t, "config/final.yml", &final)
	if final.Name != "locker" || final.Blobstore["provider"] == nil {
		t.Errorf("config/final.yml = %+v; want name locker and a blobstore provider", final)
	}
	if opts, _ := final.Blobstore["options"].(map[any]any); strings.HasPrefix(fmt.Sprint(opts["blobstore_path"]), "/tmp") {
		t.Errorf("config/final.yml keeps final blobs in %v, which does not last", opts["blobstore_path"])
	}
	jobs, _ := filepath.Glob("jobs/*")
	if len(jobs) == 0 {
		t.Fatal("no jobs")
	}
	for _, dir := range jobs {
		var spec jobSpec
		readYAML(t, filepath.Join(dir, "spec"), &spec)
		if spec.Name != filepath.Base(dir) {
			t.Errorf("%s/spec names the job %q", dir, spec.Name)
		}
		for source := range spec.Templates {
			if _, err := os.Stat(filepath.Join(dir, "templates", source)); err != nil {
				t.Errorf("%s/spec names template %s: %v", dir, source, err)
			}
		}
		if entries, _ := os.ReadDir(filepath.Join(dir, "templates")); len(entries) != len(spec.Templates) {
			t.Errorf("%s/templates has %d files; the spec names %d", dir, len(entries), len(spec.Templates))
		}
		if _, err := os.Stat(filepath.Join(dir, "monit")); err != nil {
			t.Errorf("%s: %v", dir, err)
		}
		for _, p := range spec.Packages {
			checkPackage(t, p)
		}
		for _, link := range spec.Provides {
			for _, p := range link.Properties {
				if _, ok := spec.Properties[p]; !ok {
					t.Errorf("%s: link %s provides undeclared property %s", dir, link.Name, p)
				}
			}
		}
	}
}

// checkPackage checks the package called name has a spec and a packaging
// script, and that its dependencies are in the release. golang-1-linux is
// vendored from golang-release by scripts/prepare.
func checkPackage(t *testing.T, name string) {
	t.Helper()
	var spec packageSpec
	readYAML(t, filepath.Join("packages", name, "spec"), &spec)
	if spec.Name != name || len(spec.Files) == 0 {
		t.Errorf("packages/%s/spec = %+v; want its name and its files", name, spec)
	}
	if info, err := os.Stat(filepath.Join("packages", name, "packaging")); err != nil || info.Mode()&0o111 == 0 {
		t.Errorf("packages/%s/packaging: %v (it must be there, and executable)", name, err)
	}
	for _, dep := range spec.Dependencies {
		if dep == "golang-1-linux" {
			if !strings.Contains(string(testutil.ReadFile(t, "scripts/prepare")), "bosh vendor-package golang-1-linux") {
				t.Errorf("packages/%s depends on golang-1-linux, which scripts/prepare does not vendor", name)
			}
			continue
		}
		checkPackage(t, dep)
	}
}

// ruby returns Ruby's path; where there is none the test is skipped, with
// how to get it, unless CI is set.
func ruby(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("ruby")
	if err == nil {
		return path
	}
	msg := "no ruby on this machine, so the BOSH templates were not rendered; install it with `sudo apt-get install ruby` (make test does so as root)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set, and CI must run it)")
	}
	t.Skip(msg)
	return ""
}

// render renders the locker job with the manifest's YAML and returns the
// directory of what it rendered, laid out as /var/vcap/jobs/locker is.
func render(t *testing.T, manifest string) (string, error) {
	t.Helper()
	return renderJob(t, "jobs/locker", manifest)
}

// renderJob renders the job in jobDir, as render does.
func renderJob(t *testing.T, jobDir, manifest string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	props := filepath.Join(dir, "manifest.yml")
	if err := os.WriteFile(props, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "job")
	if b, err := exec.Command(ruby(t), "scripts/render.rb", jobDir, props, out).CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, b)
	}
	return out, nil
}

// bpmProcess is a process of a rendered bpm.yml.
type bpmProcess struct {
	Name           string            `yaml:"name"`
	Executable     string            `yaml:"executable"`
	Args           []string          `yaml:"args"`
	Env            map[string]string `yaml:"env"`
	PersistentDisk bool              `yaml:"persistent_disk"`
}

func bpm(t *testing.T, job string) bpmProcess {
	t.Helper()
	var config struct {
		Processes []bpmProcess `yaml:"processes"`
	}
	readYAML(t, filepath.Join(job, "config/bpm.yml"), &config)
	if len(config.Processes) != 1 {
		t.Fatalf("bpm.yml has %d processes; want 1", len(config.Processes))
	}
	return config.Processes[0]
}

// originalProperties is the properties block of a manifest written for the
// original locker-boshrelease, with a certificate and key.
func originalProperties(t *testing.T, port int) (manifest, caPEM string) {
	t.Helper()
	certFile, keyFile, certPEM := testcert.Write(t, t.TempDir())
	indent := func(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n      ") }
	return fmt.Sprintf(`properties:
  locker:
    port: %d
    user: concourse
    password: "p4ss: with 'quotes' and \"more\""
    ssl_cert: |
      %s
    ssl_key: |
      %s
`, port, indent(certPEM), indent(string(testutil.ReadFile(t, keyFile)))), string(testutil.ReadFile(t, certFile))
}

// TestTemplatesLoadWhatTheyUse shows that the renderer gives a template
// no more of Ruby's library than the director does: a template that uses
// Shellwords without requiring it fails, as it would on the director.
func TestTemplatesLoadWhatTheyUse(t *testing.T) {
	for _, tc := range []struct {
		template, want string
	}{
		{`<%= Shellwords.escape("a b") %>`, "uninitialized constant"},
		{`<%= JSON.generate(["a"]) %>`, "uninitialized constant"},
		{"<% require \"shellwords\" -%>\n<%= Shellwords.escape(\"a b\") %>", `a\ b`},
	} {
		job := t.TempDir()
		testutil.WriteFile(t, filepath.Join(job, "spec"), "---\nname: probe\ntemplates:\n  probe.erb: bin/probe\n")
		testutil.WriteFile(t, filepath.Join(job, "monit"), "")
		testutil.WriteFile(t, filepath.Join(job, "templates", "probe.erb"), tc.template)
		out, err := renderJob(t, job, "")
		var got string
		if err != nil {
			got = err.Error()
		} else {
			got = string(testutil.ReadFile(t, filepath.Join(out, "bin", "probe")))
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("rendering %q: %q; want %q in it", tc.template, got, tc.want)
		}
	}
}

func TestTemplatesRenderTheOriginalManifest(t *testing.T) {
	manifest, _ := originalProperties(t, 8910)
	job, err := render(t, manifest)
	if err != nil {
		t.Fatal(err)
	}
	p := bpm(t, job)
	want := map[string]string{
		"PORT": "8910", "AUTH_USER": "concourse", "AUTH_PASS": `p4ss: with 'quotes' and "more"`,
		"LOCKER_CONFIG": "/var/vcap/store/locker/locker.yml",
		"SSL_CERT":      "/var/vcap/jobs/locker/config/cert.pem", "SSL_KEY": "/var/vcap/jobs/locker/config/key.pem",
	}
	for k, v := range want {
		if p.Env[k] != v {
			t.Errorf("bpm.yml env %s = %q; want %q", k, p.Env[k], v)
		}
	}
	if p.Executable != "/var/vcap/packages/locker/bin/locker" || !p.PersistentDisk {
		t.Errorf("bpm.yml process = %+v; want the package's binary, with the persistent disk", p)
	}
	if monit := string(testutil.ReadFile(t, filepath.Join(job, "monit"))); !strings.Contains(monit, `port 8910 type tcpssl protocol http`) ||
		!strings.Contains(monit, `request "/healthz"`) {
		t.Errorf("monit does not check /healthz over TLS on 8910:\n%s", monit)
	}

	// A property the spec does not declare is an error, not ignored.
	if _, err := render(t, "properties:\n  locker:\n    prot: 8910\n"); err == nil || !strings.Contains(err.Error(), "not declared") {
		t.Errorf("rendering with locker.prot = %v; want it refused as undeclared", err)
	}
	// Without TLS and auth, the server is plain HTTP and open.
	job, err = render(t, "properties: {}\n")
	if err != nil {
		t.Fatal(err)
	}
	if env := bpm(t, job).Env; env["SSL_CERT"] != "" || env["AUTH_USER"] != "" || env["PORT"] != "8910" {
		t.Errorf("bpm.yml env with no properties = %v; want port 8910, no TLS, no auth", env)
	}
	// With a database, the locks are there and not on the disk.
	job, err = render(t, "properties:\n  locker:\n    database_url: postgres://locker@db:5432/locker\n")
	if err != nil {
		t.Fatal(err)
	}
	if env := bpm(t, job).Env; env["LOCKER_DATABASE_URL"] != "postgres://locker@db:5432/locker" || env["LOCKER_CONFIG"] != "" {
		t.Errorf("bpm.yml env with locker.database_url = %v; want LOCKER_DATABASE_URL and no LOCKER_CONFIG", env)
	}
}

// teamCredentials is the credentials of the example operations file,
// bosh/manifests/operators/team-credentials.yml, as a manifest's
// properties block under locker.credentials, with each CredHub variable
// given a secret as the director would; and those secrets by credential.
func teamCredentials(t *testing.T) (properties string, secrets map[string]string) {
	t.Helper()
	var ops []struct {
		Type  string `yaml:"type"`
		Path  string `yaml:"path"`
		Value any    `yaml:"value"`
	}
	readYAML(t, "manifests/operators/team-credentials.yml", &ops)
	var value any
	for _, op := range ops {
		if strings.HasSuffix(op.Path, "/properties/locker/credentials?") {
			value = op.Value
		}
	}
	if value == nil {
		t.Fatal("team-credentials.yml sets no locker.credentials")
	}
	b, err := yaml.Marshal(value)
	if err != nil {
		t.Fatal(err)
	}
	var creds []map[string]any
	if err := yaml.Unmarshal(b, &creds); err != nil {
		t.Fatal(err)
	}
	secrets = map[string]string{}
	for _, c := range creds {
		variable, _ := c["secret"].(string)
		if !strings.HasPrefix(variable, "((") {
			t.Fatalf("team-credentials.yml: %v's secret is %q; want a CredHub variable", c["name"], variable)
		}
		secret := fmt.Sprintf("Cred%dHubMade%s", len(secrets), strings.Repeat("x", 30))
		c["secret"] = secret
		secrets[c["name"].(string)] = secret
	}
	b, err = yaml.Marshal(map[string]any{"credentials": creds})
	if err != nil {
		t.Fatal(err)
	}
	return "    " + strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "\n    ") + "\n", secrets
}

// TestTemplatesRenderCredentials renders the example team credentials:
// the server's own reader takes the file, which holds every credential's
// hash and grants and no secret. Credentials the server would refuse are
// refused when the job is rendered, naming the credential and what is
// wrong.
func TestTemplatesRenderCredentials(t *testing.T) {
	creds, secrets := teamCredentials(t)
	job, err := render(t, "properties:\n  locker:\n"+creds)
	if err != nil {
		t.Fatal(err)
	}
	env := bpm(t, job).Env
	if env["LOCKER_CREDENTIALS_FILE"] != "/var/vcap/jobs/locker/config/credentials.yml" {
		t.Fatalf("bpm.yml env LOCKER_CREDENTIALS_FILE = %q; want the rendered config/credentials.yml", env["LOCKER_CREDENTIALS_FILE"])
	}
	file := filepath.Join(job, "config/credentials.yml")
	text := string(testutil.ReadFile(t, file))
	for name, secret := range secrets {
		if strings.Contains(text, secret) {
			t.Errorf("the rendered credentials file holds %s's secret:\n%s", name, text)
		}
	}
	got, err := keyring.ReadFile(file)
	if err != nil {
		t.Fatalf("the server refuses the rendered file: %v\n%s", err, text)
	}
	if len(got) != len(secrets) {
		t.Errorf("the rendered file has %d credentials; want %d", len(got), len(secrets))
	}
	for _, c := range got {
		if !c.Matches(secrets[c.Name]) {
			t.Errorf("%s's hash is not its secret's", c.Name)
		}
	}
	if len(got) > 0 && (got[0].Name != "team-a-ci" || got[0].RoleOn("team-a/deploy") != access.Lock || got[0].RoleOn("team-b/deploy") != access.None) {
		t.Errorf("team-a-ci renders as %+v; want lock on team-a/ and nothing else", got[0])
	}
	// A hash is passed as it is.
	hash := access.HashSecret("given-as-a-hash")
	job, err = render(t, "properties:\n  locker:\n    credentials:\n    - {name: ci, hash: \""+hash+"\", grants: [{role: read, prefix: \"\"}]}\n")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := keyring.ReadFile(filepath.Join(job, "config/credentials.yml")); err != nil || len(got) != 1 || !got[0].Matches("given-as-a-hash") {
		t.Errorf("a credential given by its hash renders as %+v, %v", got, err)
	}
	// Without credentials, no file is named.
	if job, err = render(t, "properties: {}\n"); err != nil || bpm(t, job).Env["LOCKER_CREDENTIALS_FILE"] != "" {
		t.Errorf("with no credentials, LOCKER_CREDENTIALS_FILE is %q (%v); want none", bpm(t, job).Env["LOCKER_CREDENTIALS_FILE"], err)
	}

	for _, tc := range []struct{ credentials, want string }{
		{`[{name: ci, grants: [{role: lock, prefix: a/}]}]`, "locker.credentials[0] (ci): give its secret"},
		{`[{name: ci, secret: s3cret, hash: "` + hash + `", grants: [{role: lock, prefix: a/}]}]`, "not both"},
		{`[{name: ci, hash: lkr_plaintext, grants: [{role: lock, prefix: a/}]}]`, "a secret goes in secret, not hash"},
		{`[{name: ci, secret: s3cret, grants: [{role: owner, prefix: a/}]}]`, `the role "owner" is not one of read, lock, operate, admin`},
		{`[{name: ci, secret: s3cret}]`, "grants is a list"},
		{`[{secret: s3cret, grants: [{role: lock, prefix: a/}]}]`, "locker.credentials[0]: the name is missing"},
		{`[{name: ci, secret: a, grants: [{role: lock}]}, {name: ci, secret: b, grants: [{role: lock}]}]`, "ci given twice"},
		{`[{name: ci, password: s3cret, grants: [{role: lock}]}]`, "unknown key(s) password"},
		{`team-a-ci`, "a list of credentials"},
	} {
		_, err := render(t, "properties:\n  locker:\n    credentials: "+tc.credentials+"\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("rendering credentials %s: %v; want an error with %q", tc.credentials, err, tc.want)
		}
	}
}

// TestRenderedJobServes starts the locker binary as BPM would from the
// rendered bpm.yml (its /var/vcap paths moved into a temp directory) and
// talks to it over HTTPS with the credentials; then runs the rendered
// drain script against it.
func TestRenderedJobServes(t *testing.T) {
	port := testutil.FreePort(t)
	manifest, caPEM := originalProperties(t, port)
	creds, secrets := teamCredentials(t)
	job, err := render(t, manifest+creds)
	if err != nil {
		t.Fatal(err)
	}
	p := bpm(t, job)
	store := t.TempDir()
	var env []string
	for k, v := range p.Env {
		v = strings.Replace(v, "/var/vcap/jobs/locker", job, 1)
		v = strings.Replace(v, "/var/vcap/store/locker", store, 1)
		env = append(env, k+"="+v)
	}
	bin := filepath.Join(t.TempDir(), "locker")
	if b, err := testutil.GoBuild(bin, "github.com/locker-ci/locker"); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	s := testutil.StartServer(t, bin, env...)
	if s.URL != "https://127.0.0.1:"+strconv.Itoa(port) {
		t.Fatalf("server at %s; want https on port %d", s.URL, port)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(caPEM))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, tc := range []struct {
		user, pass, method, path string
		want                     int
	}{
		{"concourse", `p4ss: with 'quotes' and "more"`, "GET", "/locks", 200},
		{"concourse", "wrong", "GET", "/locks", 401},
		{"team-a-ci", secrets["team-a-ci"], "PUT", "/lock/team-a/deploy", 200},
		{"team-a-ci", secrets["team-a-ci"], "PUT", "/lock/team-b/deploy", 403},
		{"team-a-ci", secrets["team-b-ci"], "PUT", "/lock/team-a/deploy", 401},
		{"dashboard", secrets["dashboard"], "GET", "/locks", 200},
		{"dashboard", secrets["dashboard"], "PUT", "/lock/team-a/deploy", 403},
	} {
		req, _ := http.NewRequest(tc.method, s.URL+tc.path, strings.NewReader(`{"key":"k","lock_by":"job"}`))
		req.SetBasicAuth(tc.user, tc.pass)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s as %s = %d; want %d", tc.method, tc.path, tc.user, resp.StatusCode, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(store, "locker.yml")); err != nil {
		t.Errorf("the state file is not on the persistent disk: %v", err)
	}

	// The drain script finds no one waiting and lets BOSH stop the job.
	start := time.Now()
	out, err := exec.Command("bash", filepath.Join(job, "bin/drain")).Output()
	if err != nil || strings.TrimSpace(string(out)) != "0" || time.Since(start) > 20*time.Second { // waiting, it would take drain_timeout, 30 s
		t.Errorf("drain = %q, %v after %v; want 0 at once", out, err, time.Since(start))
	}
}

// TestPackagingCompilesOffline runs the package's packaging script as a
// compilation VM would, on the sources scripts/vendor-src prepares, with
// the module proxy off.
func TestPackagingCompilesOffline(t *testing.T) {
	work := t.TempDir()
	if b, err := exec.Command("scripts/vendor-src", filepath.Join(work, "locker")).CombinedOutput(); err != nil {
		t.Fatalf("vendor-src: %v\n%s", err, b)
	}
	// golang-1-linux's compile.env puts Go on the PATH; here it is there.
	script := strings.Replace(string(testutil.ReadFile(t, "packages/locker/packaging")),
		"source /var/vcap/packages/golang-1-linux/bosh/compile.env", "", 1)
	target := filepath.Join(work, "install")
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "BOSH_INSTALL_TARGET="+target, "GOPROXY=off", "GOFLAGS=-mod=vendor",
		"GOMODCACHE="+filepath.Join(work, "empty-module-cache")) // nothing from the machine's cache either
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("packaging: %v\n%s", err, b)
	}
	out, err := exec.Command(filepath.Join(target, "bin/locker"), "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "locker ") {
		t.Errorf("the compiled locker --version = %q, %v", out, err)
	}
}
