// Locker is an HTTP server that hands out named locks to CI pipelines:
// "only one deploy to prod at a time", or "these three jobs may share
// staging, but the upgrade needs it alone".
//
// A client takes a lock with PUT /lock/<name> and a key, and gives it back
// with DELETE. Holders that send the same key share the lock; a different
// key is refused with 423 Locked until they have all let go. Every change is
// on disk, in the YAML file named by LOCKER_CONFIG, before the client hears
// 200. Run "locker -h" for the configuration.
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
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `locker: an HTTP server that hands out named locks to CI pipelines.

Usage: locker [-h | --version]

Configuration is read from the environment:
  LOCKER_CONFIG  required: the YAML file that holds the locks; created if
                 missing. The original locker's JSON files load as they are.
  PORT           TCP port to listen on (default 3000).
  AUTH_USER      with AUTH_PASS: require HTTP basic auth on every request.
  AUTH_PASS      the password for AUTH_USER.
  SSL_CERT       with SSL_KEY: serve HTTPS with this PEM certificate file.
  SSL_KEY        the PEM private key file for SSL_CERT.

API:
  GET    /locks         every held lock
  GET    /lock/<name>   one lock
  PUT    /lock/<name>   take it:    {"key": "prod-cf", "lock_by": "my-job"}
  DELETE /lock/<name>   give it back: {"key": "prod-cf", "lock_by": "my-job"}
`

// Server timeouts. Requests are small and quick; these only bound how long
// a slow or stuck client can hold a connection.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 16 << 10 // a lock name is at most 1 KiB, 3 KiB escaped
	shutdownTimeout   = 10 * time.Second
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "locker: %v\n", err)
		os.Exit(1)
	}
}

// config is everything read from the environment.
type config struct {
	statePath         string
	port              int
	user, pass        string
	certFile, keyFile string
}

// loadConfig reads and checks the configuration; an error names the variable.
func loadConfig(getenv func(string) string) (config, error) {
	cfg := config{
		statePath: getenv("LOCKER_CONFIG"),
		port:      3000,
		user:      getenv("AUTH_USER"),
		pass:      getenv("AUTH_PASS"),
		certFile:  getenv("SSL_CERT"),
		keyFile:   getenv("SSL_KEY"),
	}
	if cfg.statePath == "" {
		return config{}, errors.New("LOCKER_CONFIG is not set: name the file that keeps the locks, e.g. LOCKER_CONFIG=/var/lib/locker/locks.yml")
	}
	if p := getenv("PORT"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return config{}, fmt.Errorf("PORT: not a port number: %q (want 0 to 65535)", p)
		}
		cfg.port = n
	}
	if err := bothOrNeither("AUTH_USER", cfg.user, "AUTH_PASS", cfg.pass); err != nil {
		return config{}, err
	}
	if err := bothOrNeither("SSL_CERT", cfg.certFile, "SSL_KEY", cfg.keyFile); err != nil {
		return config{}, err
	}
	return cfg, nil
}

func bothOrNeither(aName, a, bName, b string) error {
	switch {
	case a != "" && b == "":
		return fmt.Errorf("%s is set but %s is not: set both, or neither", aName, bName)
	case a == "" && b != "":
		return fmt.Errorf("%s is set but %s is not: set both, or neither", bName, aName)
	}
	return nil
}

// run serves the lock API until ctx is done, then shuts down gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			fmt.Fprint(stdout, usage)
			return nil
		case "-v", "-version", "--version":
			fmt.Fprintf(stdout, "locker %s\n", version)
			return nil
		default:
			return fmt.Errorf("unknown argument %q: locker is configured through environment variables (locker -h lists them)", a)
		}
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	var tlsConfig *tls.Config
	if cfg.certFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.certFile, cfg.keyFile)
		if err != nil {
			return fmt.Errorf("SSL_CERT/SSL_KEY: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	store := newFileStore(cfg.statePath, osDisk{})
	locks, err := store.load()
	if err != nil {
		return fmt.Errorf("%w\nlocker did not start and left the file as it was: fix it, or move it aside to start empty", err)
	}
	srv := &server{locks: newTable(store, locks), log: log}
	if cfg.user != "" {
		srv.auth = newCredentials(cfg.user, cfg.pass)
	}

	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", cfg.port))
	if err != nil {
		return fmt.Errorf("PORT: %w", err)
	}
	httpSrv := &http.Server{
		Handler:           srv.routes(),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("locker listening", "addr", ln.Addr().String(), "https", tlsConfig != nil,
		"auth", srv.auth != nil, "state_file", cfg.statePath, "locks", len(locks), "version", version)

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
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-store.fatal:
		stopErr = fmt.Errorf("stopping, the state file may not be durable: %w", err)
		log.Error("stopping so that a restart reads the state file again", "err", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := httpSrv.Shutdown(shutdownCtx); err != nil {
		return errors.Join(stopErr, fmt.Errorf("shutting down: %w", err))
	}
	if stopErr == nil {
		log.Info("stopped", "locks", srv.locks.Len())
	}
	return stopErr
}
