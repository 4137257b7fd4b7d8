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
// The pieces, top down: main.go reads the configuration and serves;
// api.go lists the routes, the middleware (auth, the request log) and
// which error answers which status; locks.go, pools.go, history.go and
// status.go are the endpoints, and request.go reads their requests. They
// call the lock engine (internal/engine), which runs every request's
// steps as transactions of a store: store.go opens the one the
// configuration names, the state file and its journal
// (internal/filestore) or PostgreSQL (internal/pgstore). docs/design.md
// has the map of every package.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/locker-ci/locker/cli"
	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/ci"
	"github.com/locker-ci/locker/internal/config"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/gcfloor"
	"github.com/locker-ci/locker/internal/keyring"
	"github.com/locker-ci/locker/internal/lazyfs"
	"github.com/locker-ci/locker/internal/logbuf"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/migrate"
	"github.com/locker-ci/locker/internal/profile"
	"github.com/locker-ci/locker/internal/stream"
	"golang.org/x/term"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `locker: an HTTP server that hands out named locks to CI pipelines.

Usage: locker serve [-h]
       locker version

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
  LOCKER_CREDENTIALS_FILE  credentials (names, grants, hashes of secrets)
                 kept in a file, read at start and on SIGHUP; more are made
                 with POST /credentials (docs/access.md).
  SSL_CERT       with SSL_KEY: serve HTTPS with this PEM certificate file.
  SSL_KEY        the PEM private key file for SSL_CERT.
  LOCKER_MAX_WAIT     longest ?wait= a request gets (default 15m); longer
                      waits are cut to it and the client asks again.
  LOCKER_DEFAULT_TTL  lease for PUTs that send no ttl (default: none).
  LOCKER_MAX_TTL      the longest lease a request may ask for (default 168h).
  LOCKER_MAX_LOCKS_PER_REQUEST  the most locks PUT /locks may take at once
                      (default 64).
  LOCKER_METRICS_AUTH  false: serve /metrics without the basic auth.
  LOCKER_CONCOURSE_URL  with LOCKER_CONCOURSE_USER and _PASSWORD: the
                      Concourse whose builds end the holds bound to them
                      (end_with_build).
  LOCKER_TRUSTED_ORIGINS  other sites whose pages may change locks, e.g.
                      https://dash.example.com (default: none; Locker's
                      own status page always may).
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
)

// gcFloor is the heap the server lets grow before it collects garbage,
// however little of it is live: see internal/gcfloor. A table of locks
// whose live heap is more than half of it is collected as GOGC says.
const gcFloor = 32 << 20

func main() {
	if !cli.IsServer(os.Args[1:]) {
		os.Exit(cli.Main(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
	}
	if len(os.Args) == 1 && os.Getenv("LOCKER_CONFIG") == "" && os.Getenv("LOCKER_DATABASE_URL") == "" && term.IsTerminal(int(os.Stdin.Fd())) {
		// A person who typed "locker" to see what it is: the help, not a
		// start-up error. A service started with no arguments serves.
		os.Exit(cli.Main([]string{"help"}, os.Getenv, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer gcfloor.Set(gcFloor)()
	stopProfile := profile.Start() // only in a build with the pprof tag
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stopProfile()
	if err != nil {
		fmt.Fprintf(os.Stderr, "locker: %v\n", err)
		if errors.Is(err, migrate.ErrUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// run reads the configuration and serves the lock API until ctx is done.
func run(ctx context.Context, args []string, environ []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "migrate" {
		return migrate.Run(ctx, args[1:], stdout)
	}
	if len(args) == 1 && args[0] == "version" {
		fmt.Fprintf(stdout, "locker %s\n", version)
		return nil
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

// loadConfig reads the configuration in environ, and checks it against
// what the API allows: a default lease no shorter than any lease.
func loadConfig(environ []string) (config.Config, error) {
	cfg, err := config.Load(environ)
	if err != nil {
		return config.Config{}, err
	}
	if cfg.DefaultTTL > 0 && cfg.DefaultTTL < minTTL {
		return config.Config{}, fmt.Errorf("LOCKER_DEFAULT_TTL: %v is under the shortest lease, %v", cfg.DefaultTTL, minTTL)
	}
	return cfg, nil
}

// serve runs the server described by cfg, keeping its state through fsys,
// until ctx is done; then it shuts down gracefully.
func serve(ctx context.Context, cfg config.Config, fsys atomicfile.FS, stderr io.Writer) error {
	log, logs := newLogger(stderr, cfg.LogJSON, cfg.LogLevel)
	defer logs.Close()

	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	tlsConfig, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	var locks *engine.Engine
	m := metrics.New(version, metrics.Gauges{
		Table: func() metrics.TableStats { return metrics.TableStats(locks.Stats()) },
		Ready: func() bool { return locks.Ready() == nil },
	})
	hub := stream.NewHub()
	credentialsChanged := make(chan struct{}, 1)
	store, err := openStore(ctx, cfg, lazyfs.FS(fsys), log, m, hub.Publish, func() {
		select {
		case credentialsChanged <- struct{}{}:
		default: // a reload is due already
		}
	})
	if err != nil {
		return err
	}
	locks = engine.New(store, engine.Options{Log: log, Metrics: m})
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Listen, strconv.Itoa(cfg.Port)))
	if err != nil {
		return errors.Join(fmt.Errorf("LOCKER_LISTEN/PORT: %w", err), store.Close(true))
	}
	srv := &server{locks: locks, hub: hub, log: log, maxWait: cfg.MaxWait, defaultTTL: cfg.DefaultTTL, maxTTL: cfg.MaxTTL, maxSet: cfg.MaxSet,
		writeTimeout: defaultTimeouts.write, streamBuffer: defaultStreamBuffer, metrics: m, metricsOpen: !cfg.MetricsAuth}
	if cfg.ConcourseURL != "" {
		srv.builds = &ci.Watcher{Table: locks, Builds: ci.NewConcourse(cfg.ConcourseURL, cfg.ConcourseUser, cfg.ConcoursePassword),
			Log: log, Leads: leads(store), Looked: m.LookedUpBuild, Ended: m.EndedWithBuild}
		m.BuildLookupsFailing(func() bool { return srv.builds.Status() != "" })
	}
	srv.keys = keyring.New(cfg.User, cfg.Pass)
	srv.origins = http.NewCrossOriginProtection()
	for _, o := range cfg.TrustedOrigins {
		_ = srv.origins.AddTrustedOrigin(o) // config.Load checked each
	}
	if cfg.CredentialsFile != "" {
		file, err := keyring.ReadFile(cfg.CredentialsFile)
		if err != nil {
			return errors.Join(fmt.Errorf("LOCKER_CREDENTIALS_FILE: %w", err), store.Close(false))
		}
		srv.keys.SetFile(file)
	}
	if err := srv.reloadCredentials(ctx); err != nil {
		return errors.Join(fmt.Errorf("reading the credentials: %w", err), store.Close(false))
	}
	where := "state_file=" + cfg.StatePath
	if cfg.DatabaseURL != "" {
		where = "postgresql"
	}
	log.Info("locker listening", "addr", ln.Addr().String(), "https", tlsConfig != nil,
		"auth", cfg.User != "", "store", where, "locks", locks.Len(), "version", version)
	if cfg.User == "" && !loopback(ln.Addr()) {
		log.Warn("auth is off and locker listens beyond this machine: anyone who can reach it can take and free every lock; set AUTH_USER and AUTH_PASS, or LOCKER_LISTEN=127.0.0.1",
			"addr", ln.Addr().String())
	}
	logs.Flush()
	srv.credentialsFile, srv.credentialsChanged = cfg.CredentialsFile, credentialsChanged
	return serveUntilDone(ctx, ln, tlsConfig, srv, store, log)
}

// loopback reports whether addr is on the loopback interface only.
func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// loadTLS returns the TLS configuration cfg asks for, or nil for plain HTTP.
func loadTLS(cfg config.Config) (*tls.Config, error) {
	if cfg.CertFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("SSL_CERT/SSL_KEY: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// serveUntilDone serves srv on ln, with the engine's background loops,
// until ctx is done or the store breaks; then it shuts the server down and
// closes the store.
func serveUntilDone(ctx context.Context, ln net.Listener, tlsConfig *tls.Config, srv *server, store engine.Store, log *slog.Logger) error {
	locks := srv.locks
	// Requests see engine.ErrClosed as their context's cause when the server
	// stops, so that waiters answer 503 instead of holding up the shutdown.
	base, stopRequests := context.WithCancelCause(context.Background())
	defer stopRequests(nil)
	httpSrv := newHTTPServer(srv.routes(), log, defaultTimeouts, base)
	httpSrv.TLSConfig = tlsConfig

	// The table's loops run until the HTTP server has stopped.
	background, stopBackground := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	loops.Go(func() { locks.Run(background) })
	loops.Go(func() { srv.watchCredentials(background) })
	if srv.builds != nil {
		loops.Go(func() { srv.builds.Run(background) })
	}
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
		return errors.Join(fmt.Errorf("serving: %w", err), store.Close(false))
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-store.Broken():
		stopErr = fmt.Errorf("stopping, the lock state on disk is in doubt: %w", err)
		log.Error("stopping so that a restart reads the state from disk again", "err", err)
	}
	stopRequests(engine.ErrClosed)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	shutdownErr := httpSrv.Shutdown(shutdownCtx)
	stopLoops()
	held := locks.Len() // counted while the store is open: a database closes with it
	if stopErr != nil {
		_ = store.Close(false) // the store keeps what it has; nothing more can be trusted
		return stopErr
	}
	if err := store.Close(true); err != nil {
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
