package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// serveNoop answers every request with 200 and a small JSON body, for the
// ceiling figures. With a directory it is the durable no-op: before its
// answer, each request also waits for a line of its own to be written and
// fdatasync'd to a file there, with one write and one sync shared by every
// request that waits at the time (group commit). That is the least any
// server that promises "200 means on disk" does per request, and nothing
// else: what the transport and the disk alone cost here. With a database,
// each request runs pgbench's one-row UPDATE there first: the least a
// server over PostgreSQL does per request.
//
// With work, the durable no-op also does what the issue keeps of a lock
// server's own work and nothing of its rules: it decodes the body as the
// locker does (an object of raw fields, then the key), writes the two log
// lines the locker writes at the default level through slog into a
// buffer flushed every 100 ms, and encodes a reply of a lock's size with
// encoding/json. The locker is compared with it to show how much of the
// gap to the durable no-op is that work.
func serveNoop(dir, database string, work bool) error {
	logger, flush := bufferedLogger()
	defer flush()
	var log *groupLog
	var pool *pgxpool.Pool
	if database != "" {
		var err error
		if pool, err = pgxpool.New(context.Background(), database); err != nil {
			return err
		}
	}
	if dir != "" {
		var err error
		if log, err = openGroupLog(filepath.Join(dir, "noop.log")); err != nil {
			return err
		}
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if work {
			keptWork(w, r, logger, log)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		if pool != nil {
			// The database ceiling: pgbench's one-row UPDATE, one per request.
			if _, err := pool.Exec(r.Context(), "UPDATE bench_row SET n = n + 1 WHERE id = $1", 1+rand.IntN(1000)); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		if log != nil {
			if err := log.commit([]byte(`{"seq":1,"lock":"parallel-1","key":"k1","holders":[{"name":"k1","count":1}]}` + "\n")); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"response":"ok"}`+"\n")
	})}
	ln, err := listenLoopback()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "msg=\"locker listening\" addr=%s\n", ln.Addr())
	return srv.Serve(ln)
}

// keptWork answers r as the durable no-op does, with the work the issue
// keeps: the body decoded, two log lines, a lock-sized reply.
func keptWork(w http.ResponseWriter, r *http.Request, logger *slog.Logger, log *groupLog) {
	start := time.Now()
	data, _ := io.ReadAll(r.Body)
	var fields map[string]json.RawMessage
	var key string
	if err := json.Unmarshal(data, &fields); err != nil || json.Unmarshal(fields["key"], &key) != nil {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	if err := log.commit([]byte(`{"seq":1,"lock":"parallel-1","key":"k1","holders":[{"name":"k1","count":1}]}` + "\n")); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	logger.Info("lock acquired", "lock", r.URL.Path, "key", key, "holder", key, "token", 1, "waited", time.Duration(0))
	reply := map[string]any{"name": r.URL.Path, "key": key, "locked_by": map[string]int{key: 1}, "token": 1,
		"acquired_at": start.UTC(), "holders": map[string]any{key: map[string]any{"count": 1, "since": start.UTC()}},
		"waiting": []any{}, "response": "lock for " + r.URL.Path + " acquired by " + key}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(reply)
	logger.LogAttrs(context.Background(), slog.LevelInfo, "request", slog.String("method", r.Method), slog.String("path", r.URL.EscapedPath()),
		slog.Int("status", http.StatusOK), slog.Duration("duration", time.Since(start)), slog.String("remote", r.RemoteAddr))
}

// bufferedLogger is a text logger to stderr through a buffer flushed every
// 100 ms, as the locker's; flush writes out the rest.
func bufferedLogger() (*slog.Logger, func()) {
	var mu sync.Mutex
	buf := bufio.NewWriterSize(os.Stderr, 64<<10)
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	})
	flush := func() {
		mu.Lock()
		defer mu.Unlock()
		_ = buf.Flush()
	}
	go func() {
		for range time.Tick(100 * time.Millisecond) {
			flush()
		}
	}()
	return slog.New(slog.NewTextHandler(w, nil)), flush
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// groupLog is an append-only file with group commit, the way the locker's
// journal does it but without a committer goroutine: the first request that
// finds no sync running writes and syncs everything queued, the others wait
// for it, and one of them leads the next sync.
type groupLog struct {
	file *os.File

	mu      sync.Mutex
	synced  *sync.Cond // signalled when durable or err changes
	queued  []byte     // lines not yet written
	last    uint64     // number of lines queued so far
	durable uint64     // lines up to this one are on disk
	syncing bool       // a request is writing and syncing
	size    int64      // bytes written
	err     error      // a failed write or sync: nothing after it is durable
}

// groupLogRoom is the room given to the file ahead of the writes, as the
// locker's journal does: syncing into allocated space does not change the
// file's size.
const groupLogRoom = 256 << 20

func openGroupLog(path string) (*groupLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600) // in the benchmark's temporary directory
	if err != nil {
		return nil, err
	}
	if err := allocate(f, groupLogRoom); err != nil {
		_ = f.Close()
		return nil, err
	}
	g := &groupLog{file: f}
	g.synced = sync.NewCond(&g.mu)
	return g, nil
}

// commit returns once line is on disk.
func (g *groupLog) commit(line []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.queued = append(g.queued, line...)
	g.last++
	mine := g.last
	for g.durable < mine && g.err == nil {
		if g.syncing {
			g.synced.Wait()
			continue
		}
		g.syncing = true
		batch, upTo, at := g.queued, g.last, g.size
		g.queued = nil
		g.mu.Unlock()
		_, err := g.file.WriteAt(batch, at)
		if err == nil {
			err = datasync(g.file)
		}
		g.mu.Lock()
		g.syncing = false
		g.size += int64(len(batch))
		g.durable, g.err = upTo, err
		g.synced.Broadcast()
	}
	return g.err
}
