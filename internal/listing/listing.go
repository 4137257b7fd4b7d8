// Package listing writes GET /locks's reply, {"<name>": <lock>, ...} in
// name order, as the locks come: the bytes an encoded map would be, but
// never the whole table in memory, and little garbage per lock (a
// million of them make the collector scan the whole table again). The
// reply starts (200) once 32 KiB are ready; until then an error can
// still be answered as one.
package listing

import (
	"net/http"
	"runtime"

	"github.com/locker-ci/locker/internal/lock"
)

// Writer writes one listing to a client.
type Writer struct {
	w       http.ResponseWriter
	buf     []byte
	n       int
	started bool  // the status has been written
	err     error // the first write that failed: the client went away
}

// New returns a writer of a listing to w.
func New(w http.ResponseWriter) *Writer {
	return &Writer{w: w, buf: append(make([]byte, 0, 40<<10), '{')}
}

// Add writes the lock called name and its queue.
func (lw *Writer) Add(name string, l lock.Lock, queue []lock.Waiting) {
	if lw.n > 0 {
		lw.buf = append(lw.buf, ',')
	}
	lw.n++
	lw.buf = lock.AppendString(lw.buf, name)
	lw.buf = append(lw.buf, ':')
	lw.buf = lock.AppendView(lw.buf, name, l, queue)
	if len(lw.buf) >= 32<<10 {
		lw.flush()
	}
}

// End writes the rest of the reply.
func (lw *Writer) End() {
	lw.buf = append(lw.buf, "}\n"...)
	lw.flush()
}

// Started reports whether the reply has begun (200): an error can no
// longer be answered as one.
func (lw *Writer) Started() bool { return lw.started }

// Err returns the first write that failed: the client went away.
func (lw *Writer) Err() error { return lw.err }

func (lw *Writer) flush() {
	if !lw.started {
		lw.w.Header().Set("Content-Type", "application/json")
		lw.w.WriteHeader(http.StatusOK)
		lw.started = true
	}
	if lw.err == nil {
		_, lw.err = lw.w.Write(lw.buf)
	}
	lw.buf = lw.buf[:0]
	// A listing is long work that blocks nothing: let the changes that
	// wait for a core go first, rather than after the scheduler's 10 ms
	// slice.
	runtime.Gosched()
}
