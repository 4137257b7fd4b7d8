// Package logbuf buffers log output, so that a busy server does not make
// a write system call for every request's log line, and writes warnings
// and errors out at once.
package logbuf

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// FlushEvery is how long a request's log line may wait in the buffer. A
// busy server would otherwise make a write system call for every request;
// warnings and errors are written at once. The buffer is worth it: in one
// alternating bench run (docs/performance.md), unbuffered logs cost 4.3
// µs more CPU per request and 3.6% of the parallel figure.
const FlushEvery = 100 * time.Millisecond

// Buffer buffers log output for at most FlushEvery.
type Buffer struct {
	mu   sync.Mutex // guards w
	w    *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

// New returns a Buffer writing to out; Close it to write out the rest.
func New(out io.Writer) *Buffer {
	b := &Buffer{w: bufio.NewWriterSize(out, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		t := time.NewTicker(FlushEvery)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-t.C:
				b.Flush()
			}
		}
	}()
	return b
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

// Flush writes out what is buffered.
func (b *Buffer) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.w.Flush() // nowhere left to report a failing stderr
}

// Close stops the flushing and writes out what is left.
func (b *Buffer) Close() {
	close(b.stop)
	<-b.done
	b.Flush()
}

// Handler returns h, writing through b, with warnings and errors written
// out at once.
func (b *Buffer) Handler(h slog.Handler) slog.Handler { return flushingHandler{h, b} }

// flushingHandler writes warnings and errors out at once.
type flushingHandler struct {
	slog.Handler
	buf *Buffer
}

func (h flushingHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		h.buf.Flush()
	}
	return err
}

func (h flushingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return flushingHandler{h.Handler.WithAttrs(attrs), h.buf}
}

func (h flushingHandler) WithGroup(name string) slog.Handler {
	return flushingHandler{h.Handler.WithGroup(name), h.buf}
}
