// Package config reads the server's settings from the environment:
// each variable checked, an error that names it, and a warning for each
// LOCKER_ variable that is not a setting.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/nearest"
	"github.com/locker-ci/locker/internal/txn"
)

// The defaults of the settings that have one besides their zero.
const (
	// DefaultMaxWait keeps waits below what proxies and load balancers
	// usually allow a request.
	DefaultMaxWait = 15 * time.Minute
	// DefaultMaxTTL is a week: longer than any CI job, short enough that a
	// typo (1000000h) does not hold a lock for a century.
	DefaultMaxTTL = 7 * 24 * time.Hour
	// DefaultMaxSet bounds the locks one request may name: every one is
	// locked in the same transaction.
	DefaultMaxSet = 64
	// DefaultPort is PORT's.
	DefaultPort = 3000
	// DefaultHistory and DefaultHistoryAge bound each lock's history:
	// enough to see the last few days of a busy lock, and a month of a
	// quiet one.
	DefaultHistory    = 100
	DefaultHistoryAge = 30 * 24 * time.Hour
)

// Config is everything read from the environment.
type Config struct {
	StatePath         string        // LOCKER_CONFIG: the state file
	DatabaseURL       string        // LOCKER_DATABASE_URL: the PostgreSQL store instead of the file
	Listen            string        // LOCKER_LISTEN: host or IP to listen on; "" for every interface
	Port              int           // PORT
	User, Pass        string        // AUTH_USER, AUTH_PASS: basic auth when set
	CredentialsFile   string        // LOCKER_CREDENTIALS_FILE: credentials with roles, read at start and on SIGHUP
	CertFile, KeyFile string        // SSL_CERT, SSL_KEY: HTTPS when set
	MaxWait           time.Duration // LOCKER_MAX_WAIT: the longest ?wait= a request gets
	DefaultTTL        time.Duration // LOCKER_DEFAULT_TTL: the lease of a PUT that sends none; 0 for none
	MaxTTL            time.Duration // LOCKER_MAX_TTL: the longest lease a request may ask for
	MaxSet            int           // LOCKER_MAX_LOCKS_PER_REQUEST
	CheckpointBytes   int64         // journal size that asks for a checkpoint, at least
	History           txn.History   // LOCKER_HISTORY events a lock, for LOCKER_HISTORY_AGE
	LogJSON           bool          // LOG_FORMAT=json
	MetricsAuth       bool          // /metrics behind the API's basic auth
	TrustedOrigins    []string      // LOCKER_TRUSTED_ORIGINS: other sites whose pages may change locks
	// LOCKER_CONCOURSE_URL, _USER and _PASSWORD: the Concourse whose builds
	// end the holds bound to them.
	ConcourseURL, ConcourseUser, ConcoursePassword string
	LogLevel                                       slog.Level
	Warnings                                       []string // said in the log at start: variables that look misspelt
}

// Load reads and checks the configuration in environ (KEY=VALUE
// pairs, as os.Environ gives them); an error names the variable.
func Load(environ []string) (Config, error) {
	vars := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	getenv := func(name string) string { return vars[name] }
	cfg := Config{
		StatePath:   getenv("LOCKER_CONFIG"),
		DatabaseURL: getenv("LOCKER_DATABASE_URL"),
		Listen:      getenv("LOCKER_LISTEN"),
		Port:        DefaultPort,
		User:        getenv("AUTH_USER"),
		Pass:        getenv("AUTH_PASS"),

		CredentialsFile: getenv("LOCKER_CREDENTIALS_FILE"),

		ConcourseURL:      getenv("LOCKER_CONCOURSE_URL"),
		ConcourseUser:     getenv("LOCKER_CONCOURSE_USER"),
		ConcoursePassword: getenv("LOCKER_CONCOURSE_PASSWORD"),

		CertFile: getenv("SSL_CERT"),
		KeyFile:  getenv("SSL_KEY"),
		MaxWait:  DefaultMaxWait,
		MaxTTL:   DefaultMaxTTL,
		MaxSet:   DefaultMaxSet,

		CheckpointBytes: filestore.DefaultCheckpointBytes,
		MetricsAuth:     true,
		History:         txn.History{Events: DefaultHistory, Age: DefaultHistoryAge},
	}
	switch {
	case cfg.StatePath == "" && cfg.DatabaseURL == "":
		return Config{}, errors.New("LOCKER_CONFIG is not set: name the file that keeps the locks, e.g. LOCKER_CONFIG=/var/lib/locker/locks.yml (or set LOCKER_DATABASE_URL to keep them in PostgreSQL)")
	case cfg.StatePath != "" && cfg.DatabaseURL != "":
		return Config{}, errors.New("LOCKER_CONFIG and LOCKER_DATABASE_URL are both set: the locks are kept in one place; unset one (locker migrate moves locks between them)")
	}
	e := env{getenv: getenv}
	e.port("PORT", &cfg.Port)
	e.duration("LOCKER_MAX_WAIT", &cfg.MaxWait)
	e.duration("LOCKER_DEFAULT_TTL", &cfg.DefaultTTL)
	e.duration("LOCKER_MAX_TTL", &cfg.MaxTTL)
	e.count("LOCKER_MAX_LOCKS_PER_REQUEST", &cfg.MaxSet)
	e.boolean("LOCKER_METRICS_AUTH", &cfg.MetricsAuth)
	e.bytes("LOCKER_CHECKPOINT_BYTES", &cfg.CheckpointBytes)
	e.countOrNone("LOCKER_HISTORY", &cfg.History.Events)
	e.duration("LOCKER_HISTORY_AGE", &cfg.History.Age)
	e.origins("LOCKER_TRUSTED_ORIGINS", &cfg.TrustedOrigins)
	e.logging(&cfg)
	if e.err != nil {
		return Config{}, e.err
	}
	if cfg.DefaultTTL > cfg.MaxTTL {
		return Config{}, fmt.Errorf("LOCKER_DEFAULT_TTL (%v) is over LOCKER_MAX_TTL (%v): lower the one or raise the other", cfg.DefaultTTL, cfg.MaxTTL)
	}
	if err := bothOrNeither(vars, "AUTH_USER", "AUTH_PASS"); err != nil {
		return Config{}, err
	}
	if err := bothOrNeither(vars, "SSL_CERT", "SSL_KEY"); err != nil {
		return Config{}, err
	}
	if err := checkConcourse(cfg); err != nil {
		return Config{}, err
	}
	if isPlaceholder(cfg.Pass) {
		return Config{}, fmt.Errorf("AUTH_PASS is %q, the placeholder of an example file: anyone who has read it knows the password. Choose one of your own, e.g. AUTH_PASS=$(openssl rand -hex 16)", cfg.Pass)
	}
	cfg.Warnings = unknownVariables(vars)
	return cfg, nil
}

// checkConcourse checks the Concourse settings: none, or a URL with a
// user and a password.
func checkConcourse(cfg Config) error {
	switch {
	case cfg.ConcourseURL == "" && (cfg.ConcourseUser != "" || cfg.ConcoursePassword != ""):
		return errors.New("LOCKER_CONCOURSE_USER or LOCKER_CONCOURSE_PASSWORD is set without LOCKER_CONCOURSE_URL: set the Concourse's URL too (e.g. https://ci.example.com), or unset them")
	case cfg.ConcourseURL == "":
		return nil
	case cfg.ConcourseUser == "" || cfg.ConcoursePassword == "":
		return errors.New("LOCKER_CONCOURSE_URL is set without LOCKER_CONCOURSE_USER and LOCKER_CONCOURSE_PASSWORD: name a Concourse user (a local user, e.g. added with --add-local-user) that can see the teams' builds")
	}
	if u, err := url.Parse(cfg.ConcourseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("LOCKER_CONCOURSE_URL: %q is not an http(s) URL; write it as the browser shows it, e.g. https://ci.example.com", cfg.ConcourseURL)
	}
	return nil
}

// isPlaceholder reports whether pass is a password that example files
// ship, ours among them, for the reader to replace.
func isPlaceholder(pass string) bool {
	switch strings.ToLower(strings.Trim(pass, "<>")) {
	case "change-me", "changeme", "change_me", "password", "replace-me", "replaceme":
		return true
	}
	return false
}

// knownVariables are the LOCKER_ variables Locker reads: the server's,
// the client's (LOCKER_URL...), the ones locker run sets for its command,
// and the tests'.
var knownVariables = []string{
	"LOCKER_CONFIG", "LOCKER_DATABASE_URL", "LOCKER_LISTEN", "LOCKER_MAX_WAIT", "LOCKER_DEFAULT_TTL", "LOCKER_MAX_TTL",
	"LOCKER_MAX_LOCKS_PER_REQUEST", "LOCKER_METRICS_AUTH", "LOCKER_TRUSTED_ORIGINS", "LOCKER_CHECKPOINT_BYTES", "LOCKER_HISTORY", "LOCKER_HISTORY_AGE",
	"LOCKER_CREDENTIALS_FILE", "LOCKER_CONCOURSE_URL", "LOCKER_CONCOURSE_USER", "LOCKER_CONCOURSE_PASSWORD",
	"LOCKER_URL", "LOCKER_USER", "LOCKER_PASSWORD", "LOCKER_CA_CERT",
	"LOCKER_TOKEN", "LOCKER_LOCK", "LOCKER_LOCKS",
	"LOCKER_TEST_DATABASE_URL", "LOCKER_TEST_RESTART_POSTGRES", "LOCKER_STRESS", "LOCKER_CPU_PROFILE",
}

// unknownVariables says, for each LOCKER_ variable in vars that Locker
// does not read, that it is ignored, and which one was likely meant.
func unknownVariables(vars map[string]string) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(vars)) {
		if !strings.HasPrefix(name, "LOCKER_") || slices.Contains(knownVariables, name) {
			continue
		}
		msg := name + " is not a setting of locker's, and is ignored"
		if near, ok := nearest.Word(name, knownVariables); ok {
			msg += fmt.Sprintf("; did you mean %s?", near)
		}
		out = append(out, msg)
	}
	return out
}

// env reads settings from the environment into their fields, leaving a
// field as it is when its variable is unset. It keeps the first error,
// which names its variable.
type env struct {
	getenv func(string) string
	err    error
}

// value returns the variable's value, or "" once an error was found.
func (e *env) value(name string) string {
	if e.err != nil {
		return ""
	}
	return e.getenv(name)
}

func (e *env) port(name string, dst *int) {
	if v := e.value(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 65535 {
			e.err = fmt.Errorf("%s: not a port number: %q (want 0 to 65535)", name, v)
			return
		}
		*dst = n
	}
}

func (e *env) duration(name string, dst *time.Duration) {
	if v := e.value(name); v != "" {
		n, err := time.ParseDuration(v)
		if err != nil || n <= 0 {
			e.err = fmt.Errorf("%s: not a positive duration: %q (e.g. 15m or 1h)", name, v)
			return
		}
		*dst = n
	}
}

// count reads a whole number of at least 1.
func (e *env) count(name string, dst *int) {
	e.whole(name, dst, 1, "not a positive whole number: %q (e.g. 64)")
}

// countOrNone reads a whole number of at least 0.
func (e *env) countOrNone(name string, dst *int) {
	e.whole(name, dst, 0, "not a whole number: %q (e.g. 100; 0 for none)")
}

// whole reads a whole number of at least least; problem says why one
// is refused.
func (e *env) whole(name string, dst *int, least int, problem string) {
	if v := e.value(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < least {
			e.err = fmt.Errorf("%s: "+problem, name, v)
			return
		}
		*dst = n
	}
}

func (e *env) boolean(name string, dst *bool) {
	if v := e.value(name); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.err = fmt.Errorf("%s: %q is not true or false", name, v)
			return
		}
		*dst = b
	}
}

// origins reads a list of origins (https://dash.example.com), separated
// by commas or spaces.
func (e *env) origins(name string, dst *[]string) {
	for _, o := range strings.FieldsFunc(e.value(name), func(r rune) bool { return r == ',' || r == ' ' }) {
		if err := http.NewCrossOriginProtection().AddTrustedOrigin(o); err != nil {
			e.err = fmt.Errorf("%s: %q is not an origin: write a scheme and a host, and a port if not the scheme's, as https://dash.example.com:8443 (no path)", name, o)
			return
		}
		*dst = append(*dst, o)
	}
}

func (e *env) bytes(name string, dst *int64) {
	if v := e.value(name); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			e.err = fmt.Errorf("%s: not a positive number of bytes: %q (e.g. 8388608)", name, v)
			return
		}
		*dst = n
	}
}

// logging reads LOG_FORMAT and LOG_LEVEL.
func (e *env) logging(cfg *Config) {
	switch f := e.value("LOG_FORMAT"); f {
	case "", "text":
	case "json":
		cfg.LogJSON = true
	default:
		e.err = fmt.Errorf("LOG_FORMAT: %q is not a log format: use text (the default) or json", f)
		return
	}
	if v := e.value("LOG_LEVEL"); v != "" {
		if err := cfg.LogLevel.UnmarshalText([]byte(v)); err != nil {
			e.err = fmt.Errorf("LOG_LEVEL: %q is not a level: use debug, info (the default), warn or error", v)
		}
	}
}

// bothOrNeither checks that the variables a and b are both set, or
// neither; an empty one counts as unset, and the message says which.
func bothOrNeither(vars map[string]string, a, b string) error {
	if vars[a] == "" && vars[b] != "" {
		a, b = b, a
	}
	if vars[a] == "" || vars[b] != "" {
		return nil
	}
	state := "is not set"
	if _, ok := vars[b]; ok {
		state = "is empty"
	}
	return fmt.Errorf("%s is set but %s %s: set both, or neither", a, b, state)
}
