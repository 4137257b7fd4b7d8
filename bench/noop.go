package main

import (
	"context"
	"fmt"
	"io"
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
func serveNoop(dir, database string) error {
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
