// Locker is an HTTP server that hands out named locks to CI pipelines:
// "only one deploy to prod at a time", or "these three jobs may share
// staging, but the upgrade needs it alone".
//
// A client takes a lock with PUT /lock/<name> and a key, and gives it back
// with DELETE. Holders that send the same key share the lock; a different
// key is refused with 423 Locked until they have all let go. Every change is
// on disk before the client hears 200: appended to a journal beside the
// YAML state file named by LOCKER_CONFIG, and checkpointed into that file
// from time to time and at shutdown. Run "locker -h" for the configuration.
//
// The same binary is the client, "locker run NAME -- CMD" and the rest
// (package cli): main hands it the command line when its first word is
// one of the client's commands.
//
// The pieces, top down: api.go and request.go answer HTTP; locks.go is the
// lock table, running the rules of internal/lock (tx.go makes and undoes
// its changes, leases.go expires holds); store.go is the interface to
// persistence and the file store, built from internal/journal,
// internal/statefile and internal/atomicfile. With LOCKER_DATABASE_URL,
// pgtable.go serves the table several nodes share in PostgreSQL
// (internal/pgstore) instead.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/locker-ci/locker/cli"
	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/lazyfs"
	"github.com/locker-ci/locker/internal/logbuf"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/nearest"
	"github.com/locker-ci/locker/internal/profile"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `locker: an HTTP server that hands out named locks to CI pipelines.

Usage: locker serve [-h]
       locker --version

With no arguments, or serve, locker serves the lock API. The same binary
is the client: locker run, lock, unlock, ls, ... (locker help lists them).
locker migrate copies locks between a state file and PostgreSQL.

Configuration is read from the environment:
  LOCKER_CONFIG  the YAML file that holds the locks; created if missing.
                 The original locker's JSON files load as they are.
  LOCKER_DATABASE_URL  instead of LOCKER_CONFIG: keep the locks in
                 PostgreSQL (postgres://user:pass@host:5432/db?sslmode=...),
                 shared by every node that names the same database.
  PORT           TCP port to listen on (default 3000).
  LOCKER_LISTEN  the address to listen on, e.g. 127.0.0.1 (default: every
                 interface).
  AUTH_USER      with AUTH_PASS: require HTTP basic auth on every request.
  AUTH_PASS      the password for AUTH_USER.
  SSL_CERT       with SSL_KEY: serve HTTPS with this PEM certificate file.
  SSL_KEY        the PEM private key file for SSL_CERT.
  LOCKER_MAX_WAIT     longest ?wait= a request gets (default 15m); longer
                      waits are cut to it and the client asks again.
  LOCKER_DEFAULT_TTL  lease for PUTs that send no ttl (default: none).
  LOCKER_MAX_TTL      the longest lease a request may ask for (default 168h).
  LOCKER_MAX_LOCKS_PER_REQUEST  the most locks PUT /locks may take at once
                      (default 64).
  LOCKER_METRICS_AUTH  false: serve /metrics without the basic auth.
  LOG_FORMAT     text (the default) or json, for every log line.
  LOG_LEVEL      debug, info (the default), warn or error.
  LOCKER_CHECKPOINT_BYTES  journal size before it is checkpointed into the
                      state file (default 8 MiB; tests make it small).

API:
  GET    /locks         every held lock
  GET    /lock/<name>   one lock
  PUT    /lock/<name>   take it:      {"key": "prod-cf", "lock_by": "my-job"}
                        ?wait=5m waits for it; "ttl": "30m" leases it
  PATCH  /lock/<name>   renew a lease: {"key": "prod-cf", "lock_by": "my-job", "ttl": "30m"}
  DELETE /lock/<name>   give it back: {"key": "prod-cf", "lock_by": "my-job"}
                        ?force=true frees it whoever holds it
`

// timeouts bound how long a slow or stuck client can hold a connection.
// Requests are small and quick; a PUT that waits for a lock extends its own
// deadlines by the wait.
type timeouts struct {
	readHeader, read, write, idle time.Duration
}

var defaultTimeouts = timeouts{
	readHeader: 10 * time.Second,
	read:       30 * time.Second,
	write:      30 * time.Second,
	idle:       2 * time.Minute,
}

const (
	// maxHeaderBytes keeps a request's line and headers to 16 KiB, as the
	// API docs say (docs/api.md): net/http reads 4 KiB past MaxHeaderBytes before it
	// answers 431. A lock name is at most 1 KiB, 3 KiB escaped.
	maxHeaderBytes  = 16<<10 - 4<<10
	shutdownTimeout = 10 * time.Second
	// defaultMaxWait keeps waits below what proxies and load balancers
	// usually allow a request.
	defaultMaxWait = 15 * time.Minute
	// defaultMaxTTL is a week: longer than any CI job, short enough that a
	// typo (1000000h) does not hold a lock for a century.
	defaultMaxTTL = 7 * 24 * time.Hour
	// defaultMaxSet bounds the locks one request may name: every one is
	// locked in the same transaction.
	defaultMaxSet = 64
)

func main() {
	if !cli.IsServer(os.Args[1:]) {
		os.Exit(cli.Main(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopProfile := profile.Start() // only in a build with the pprof tag
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stopProfile()
	if err != nil {
		fmt.Fprintf(os.Stderr, "locker: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// config is everything read from the environment.
type config struct {
	statePath         string
	databaseURL       string // LOCKER_DATABASE_URL: the PostgreSQL store instead of the file
	listen            string // host or IP to listen on; "" for every interface
	port              int
	user, pass        string
	certFile, keyFile string
	maxWait           time.Duration
	defaultTTL        time.Duration
	maxTTL            time.Duration
	maxSet            int   // LOCKER_MAX_LOCKS_PER_REQUEST
	checkpointBytes   int64 // journal size that asks for a checkpoint, at least
	logJSON           bool  // LOG_FORMAT=json
	metricsAuth       bool  // /metrics behind the API's basic auth
	logLevel          slog.Level
	warnings          []string // said in the log at start: variables that look misspelt
}

// loadConfig reads and checks the configuration in environ (KEY=VALUE
// pairs, as os.Environ gives them); an error names the variable.
func loadConfig(environ []string) (config, error) {
	vars := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	getenv := func(name string) string { return vars[name] }
	cfg := config{
		statePath:   getenv("LOCKER_CONFIG"),
		databaseURL: getenv("LOCKER_DATABASE_URL"),
		listen:      getenv("LOCKER_LISTEN"),
		port:        3000,
		user:        getenv("AUTH_USER"),
		pass:        getenv("AUTH_PASS"),
		certFile:    getenv("SSL_CERT"),
		keyFile:     getenv("SSL_KEY"),
		maxWait:     defaultMaxWait,
		maxTTL:      defaultMaxTTL,
		maxSet:      defaultMaxSet,

		checkpointBytes: filestore.DefaultCheckpointBytes,
		metricsAuth:     true,
	}
	switch {
	case cfg.statePath == "" && cfg.databaseURL == "":
		return config{}, errors.New("LOCKER_CONFIG is not set: name the file that keeps the locks, e.g. LOCKER_CONFIG=/var/lib/locker/locks.yml (or set LOCKER_DATABASE_URL to keep them in PostgreSQL)")
	case cfg.statePath != "" && cfg.databaseURL != "":
		return config{}, errors.New("LOCKER_CONFIG and LOCKER_DATABASE_URL are both set: the locks are kept in one place; unset one (locker migrate moves locks between them)")
	}
	e := env{getenv: getenv}
	e.port("PORT", &cfg.port)
	e.duration("LOCKER_MAX_WAIT", &cfg.maxWait)
	e.duration("LOCKER_DEFAULT_TTL", &cfg.defaultTTL)
	e.duration("LOCKER_MAX_TTL", &cfg.maxTTL)
	e.count("LOCKER_MAX_LOCKS_PER_REQUEST", &cfg.maxSet)
	e.boolean("LOCKER_METRICS_AUTH", &cfg.metricsAuth)
	e.bytes("LOCKER_CHECKPOINT_BYTES", &cfg.checkpointBytes)
	e.logging(&cfg)
	if e.err != nil {
		return config{}, e.err
	}
	if cfg.defaultTTL > cfg.maxTTL {
		return config{}, fmt.Errorf("LOCKER_DEFAULT_TTL (%v) is over LOCKER_MAX_TTL (%v): lower the one or raise the other", cfg.defaultTTL, cfg.maxTTL)
	}
	if cfg.defaultTTL > 0 && cfg.defaultTTL < minTTL {
		return config{}, fmt.Errorf("LOCKER_DEFAULT_TTL: %v is under the shortest lease, %v", cfg.defaultTTL, minTTL)
	}
	if err := bothOrNeither(vars, "AUTH_USER", "AUTH_PASS"); err != nil {
		return config{}, err
	}
	if err := bothOrNeither(vars, "SSL_CERT", "SSL_KEY"); err != nil {
		return config{}, err
	}
	if isPlaceholder(cfg.pass) {
		return config{}, fmt.Errorf("AUTH_PASS is %q, the placeholder of an example file: anyone who has read it knows the password. Choose one of your own, e.g. AUTH_PASS=$(openssl rand -hex 16)", cfg.pass)
	}
	cfg.warnings = unknownVariables(vars)
	return cfg, nil
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
	"LOCKER_MAX_LOCKS_PER_REQUEST", "LOCKER_METRICS_AUTH", "LOCKER_CHECKPOINT_BYTES",
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

func (e *env) count(name string, dst *int) {
	if v := e.value(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			e.err = fmt.Errorf("%s: not a positive whole number: %q (e.g. 64)", name, v)
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
func (e *env) logging(cfg *config) {
	switch f := e.value("LOG_FORMAT"); f {
	case "", "text":
	case "json":
		cfg.logJSON = true
	default:
		e.err = fmt.Errorf("LOG_FORMAT: %q is not a log format: use text (the default) or json", f)
		return
	}
	if v := e.value("LOG_LEVEL"); v != "" {
		if err := cfg.logLevel.UnmarshalText([]byte(v)); err != nil {
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

// run reads the configuration and serves the lock API until ctx is done.
func run(ctx context.Context, args []string, environ []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "migrate" {
		return runMigrate(ctx, args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			fmt.Fprint(stdout, usage)
			return nil
		case "-v", "-version", "--version":
			fmt.Fprintf(stdout, "locker %s\n", version)
			return nil
		default:
			return fmt.Errorf("unknown argument %q: the server is configured through environment variables (locker serve -h lists them), and locker help lists the client's commands", a)
		}
	}
	cfg, err := loadConfig(environ)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, atomicfile.OS{}, stderr)
}

// serve runs the server described by cfg, keeping its state through fsys,
// until ctx is done; then it shuts down gracefully.
func serve(ctx context.Context, cfg config, fsys atomicfile.FS, stderr io.Writer) error {
	log, logs := newLogger(stderr, cfg.logJSON, cfg.logLevel)
	defer logs.Close()

	for _, w := range cfg.warnings {
		log.Warn(w)
	}
	tlsConfig, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	var locks *engine
	m := metrics.New(version, metrics.Gauges{
		Table: func() metrics.TableStats { return locks.stats() },
		Ready: func() bool { return locks.Ready() == nil },
	})
	store, err := openStore(ctx, cfg, lazyfs.FS(fsys), log, m)
	if err != nil {
		return err
	}
	locks = &engine{store: store, log: log, metrics: m}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.listen, strconv.Itoa(cfg.port)))
	if err != nil {
		return errors.Join(fmt.Errorf("LOCKER_LISTEN/PORT: %w", err), store.Close(true))
	}
	srv := &server{locks: locks, log: log, maxWait: cfg.maxWait, defaultTTL: cfg.defaultTTL, maxTTL: cfg.maxTTL, maxSet: cfg.maxSet,
		writeTimeout: defaultTimeouts.write, metrics: m, metricsOpen: !cfg.metricsAuth}
	if cfg.user != "" {
		srv.auth = newCredentials(cfg.user, cfg.pass)
	}
	where := "state_file=" + cfg.statePath
	if cfg.databaseURL != "" {
		where = "postgresql"
	}
	log.Info("locker listening", "addr", ln.Addr().String(), "https", tlsConfig != nil,
		"auth", srv.auth != nil, "store", where, "locks", locks.Len(), "version", version)
	if srv.auth == nil && !loopback(ln.Addr()) {
		log.Warn("auth is off and locker listens beyond this machine: anyone who can reach it can take and free every lock; set AUTH_USER and AUTH_PASS, or LOCKER_LISTEN=127.0.0.1",
			"addr", ln.Addr().String())
	}
	logs.Flush()
	return serveUntilDone(ctx, ln, tlsConfig, srv, locks, log)
}

// loopback reports whether addr is on the loopback interface only.
func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// loadTLS returns the TLS configuration cfg asks for, or nil for plain HTTP.
func loadTLS(cfg config) (*tls.Config, error) {
	if cfg.certFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.certFile, cfg.keyFile)
	if err != nil {
		return nil, fmt.Errorf("SSL_CERT/SSL_KEY: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// serveUntilDone serves srv on ln, with the table's background loops,
// until ctx is done or the store breaks; then it shuts the server down and
// closes the table.
func serveUntilDone(ctx context.Context, ln net.Listener, tlsConfig *tls.Config, srv *server, locks *engine, log *slog.Logger) error {
	// Requests see errShuttingDown as their context's cause when the server
	// stops, so that waiters answer 503 instead of holding up the shutdown.
	base, stopRequests := context.WithCancelCause(context.Background())
	defer stopRequests(nil)
	httpSrv := newHTTPServer(srv.routes(), log, defaultTimeouts, base)
	httpSrv.TLSConfig = tlsConfig

	// The table's loops run until the HTTP server has stopped.
	background, stopBackground := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	loops.Go(func() { locks.background(background) })
	stopLoops := func() {
		stopBackground()
		loops.Wait()
	}

	served := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			served <- httpSrv.ServeTLS(ln, "", "")
		} else {
			served <- httpSrv.Serve(ln)
		}
	}()

	var stopErr error
	select {
	case err := <-served:
		stopLoops()
		return errors.Join(fmt.Errorf("serving: %w", err), locks.store.Close(false))
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-locks.store.Broken():
		stopErr = fmt.Errorf("stopping, the lock state on disk is in doubt: %w", err)
		log.Error("stopping so that a restart reads the state from disk again", "err", err)
	}
	stopRequests(errShuttingDown)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	shutdownErr := httpSrv.Shutdown(shutdownCtx)
	stopLoops()
	held := locks.Len() // counted while the store is open: a database closes with it
	if stopErr != nil {
		_ = locks.store.Close(false) // the store keeps what it has; nothing more can be trusted
		return stopErr
	}
	if err := locks.store.Close(true); err != nil {
		return fmt.Errorf("saving the lock state at shutdown: %w (the journal beside the state file still holds every change)", err)
	}
	if shutdownErr != nil {
		return fmt.Errorf("shutting down: %w", shutdownErr)
	}
	log.Info("stopped", "locks", held)
	return nil
}

// newHTTPServer returns the server for h; its requests' contexts derive
// from base.
func newHTTPServer(h http.Handler, log *slog.Logger, t timeouts, base context.Context) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.readHeader,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
}

// newLogger returns the server's logger, writing text lines (or JSON, with
// asJSON) of level and above to out through a buffer; close it to write
// out the rest.
func newLogger(out io.Writer, asJSON bool, level slog.Level) (*slog.Logger, *logbuf.Buffer) {
	buf := logbuf.New(out)
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(buf, opts)
	if asJSON {
		h = slog.NewJSONHandler(buf, opts)
	}
	return slog.New(buf.Handler(h)), buf
}
