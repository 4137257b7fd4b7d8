package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a PostgreSQL primary and its streaming standby, made for one
// test with initdb and pg_basebackup in a folder of its own, on ports of
// their own: a database that fails over, without touching the one other
// tests use. The standby's WAL comes through a proxy (Feed), which can cut
// it off so that it misses the primary's last commits. As root, the
// servers run as the postgres user (PostgreSQL refuses to run as root).
type Cluster struct {
	tb      testing.TB
	bin     string   // the folder of initdb, pg_ctl, ...
	as      []string // the command prefix that runs as the servers' user
	dir     string
	Primary *Postgres
	Standby *Postgres
	// Feed carries the standby's replication connection: Feed.Down()
	// leaves it behind the primary.
	Feed *Proxy
}

// Postgres is one server of a Cluster.
type Postgres struct {
	Dir  string // its data folder
	Port int
	log  string
}

// Addr is the server's host:port.
func (p *Postgres) Addr() string { return "127.0.0.1:" + strconv.Itoa(p.Port) }

// NewCluster makes and starts a primary and its standby. With sync, the
// primary waits for the standby to have each commit (synchronous_commit
// on, the standby named in synchronous_standby_names); without it,
// replication is asynchronous, the default. Where PostgreSQL's server
// programs are not installed, the test is skipped saying so (failed under
// CI).
func NewCluster(tb testing.TB, sync bool) *Cluster {
	tb.Helper()
	c := &Cluster{tb: tb, bin: postgresBin(tb)}
	dir, err := os.MkdirTemp("", "locker-pg-cluster-")
	if err != nil {
		tb.Fatal(err)
	}
	c.dir = dir
	tb.Cleanup(func() { c.stopAll(); _ = os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			tb.Fatalf("running as root, the test runs PostgreSQL as the postgres user, and there is none: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			tb.Fatal(err)
		}
		c.as = []string{"runuser", "-u", "postgres", "--"}
	}
	c.Primary = &Postgres{Dir: filepath.Join(dir, "primary"), Port: FreePort(tb), log: filepath.Join(dir, "primary.log")}
	c.Standby = &Postgres{Dir: filepath.Join(dir, "standby"), Port: FreePort(tb), log: filepath.Join(dir, "standby.log")}

	c.run("initdb", "-D", c.Primary.Dir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = '" + dir + "'",
		"max_connections = 60", "shared_buffers = 16MB",
		"wal_level = replica", "max_wal_senders = 4", "wal_keep_size = 64MB",
		"fsync = off", // a stop -m immediate loses nothing the kernel has; the machine does not crash
		"wal_sender_timeout = 5s", "wal_receiver_status_interval = 1s",
	}
	if sync {
		conf = append(conf, "synchronous_standby_names = 'standby'", "synchronous_commit = on")
	}
	c.appendConf(c.Primary, conf...)
	c.start(c.Primary)
	c.Feed = NewProxy(tb, c.Primary.Addr())
	host, port, _ := strings.Cut(c.Feed.Addr(), ":")
	c.run("pg_basebackup", "-D", c.Standby.Dir, "-R", "-X", "stream", "--no-sync",
		"-d", fmt.Sprintf("host=%s port=%s user=postgres application_name=standby", host, port))
	// As a primary, once promoted, the standby waits for no standby of
	// its own: it has none.
	c.appendConf(c.Standby, "synchronous_standby_names = ''")
	c.start(c.Standby)
	c.WaitStreaming()
	return c
}

// postgresBin returns the folder of PostgreSQL's server programs.
func postgresBin(tb testing.TB) string {
	tb.Helper()
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		bin := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(bin, "initdb")); err == nil {
			return bin
		}
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Strings(found)
	if len(found) > 0 {
		return filepath.Dir(found[len(found)-1])
	}
	msg := "PostgreSQL's server programs (initdb, pg_ctl, pg_basebackup) are not installed, so this failover test did not run; " +
		"install them (Debian: apt-get install postgresql) and run it again"
	if os.Getenv("CI") != "" {
		tb.Fatal(msg + " (CI is set, and CI must run it)")
	}
	tb.Skip(msg)
	return ""
}

// run runs one of PostgreSQL's programs as the servers' user, failing
// the test with its output if it fails.
func (c *Cluster) run(program string, args ...string) {
	c.tb.Helper()
	argv := append(append(append([]string(nil), c.as...), filepath.Join(c.bin, program)), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = c.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		c.tb.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// appendConf adds settings to a server's postgresql.conf.
func (c *Cluster) appendConf(p *Postgres, lines ...string) {
	c.tb.Helper()
	f, err := os.OpenFile(filepath.Join(p.Dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		c.tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n" + strings.Join(lines, "\n") + "\n"); err != nil {
		c.tb.Fatal(err)
	}
}

// start starts p on its port and waits until it takes connections.
func (c *Cluster) start(p *Postgres) {
	c.tb.Helper()
	c.run("pg_ctl", "-D", p.Dir, "-l", p.log, "-o", "-p "+strconv.Itoa(p.Port), "-w", "-t", "60", "start")
}

// StopPrimary stops the primary at once, as a machine that dies: no
// shutdown checkpoint, its connections cut.
func (c *Cluster) StopPrimary() {
	c.tb.Helper()
	c.run("pg_ctl", "-D", c.Primary.Dir, "-m", "immediate", "-w", "stop")
}

// Promote makes the standby the primary, and waits until it takes writes.
func (c *Cluster) Promote() {
	c.tb.Helper()
	c.run("pg_ctl", "-D", c.Standby.Dir, "-w", "-t", "60", "promote")
}

// WaitStreaming waits until the standby streams from the primary (and,
// with synchronous replication, is the synchronous one).
func (c *Cluster) WaitStreaming() {
	c.tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		err := c.query(c.Primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &n)
		if err == nil && n == 1 {
			return
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("the standby did not stream from the primary within a minute (%v); its log:\n%s", err, ReadFile(c.tb, c.Standby.log))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// query runs sql on p and scans its one row into dst.
func (c *Cluster) query(p *Postgres, sql string, dst ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL(p))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dst...)
}

// Query runs sql on p and scans its one row into dst, failing the test
// if it cannot.
func (c *Cluster) Query(p *Postgres, sql string, dst ...any) {
	c.tb.Helper()
	if err := c.query(p, sql, dst...); err != nil {
		c.tb.Fatalf("%s on %s: %v", sql, p.Addr(), err)
	}
}

// URL returns the URL of the database postgres on the hosts given, in
// order, with target_session_attrs=read-write when there are several.
func (c *Cluster) URL(hosts ...*Postgres) string {
	addrs := make([]string, len(hosts))
	for i, h := range hosts {
		addrs[i] = h.Addr()
	}
	u := "postgres://postgres@" + strings.Join(addrs, ",") + "/postgres?sslmode=disable"
	if len(hosts) > 1 {
		u += "&target_session_attrs=read-write"
	}
	return u
}

// Logs returns both servers' logs, for a failing test.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, p := range []*Postgres{c.Primary, c.Standby} {
		data, _ := os.ReadFile(p.log)
		fmt.Fprintf(&b, "--- %s (%s)\n%s", filepath.Base(p.Dir), p.Addr(), data)
	}
	return b.String()
}

// stopAll stops whatever still runs, at once.
func (c *Cluster) stopAll() {
	for _, p := range []*Postgres{c.Primary, c.Standby} {
		if p == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(p.Dir, "postmaster.pid")); err != nil {
			continue
		}
		argv := append(append([]string(nil), c.as...), filepath.Join(c.bin, "pg_ctl"), "-D", p.Dir, "-m", "immediate", "-w", "stop")
		_ = exec.Command(argv[0], argv[1:]...).Run()
	}
}
