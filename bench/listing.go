package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
)

// listingFigures are what a full listing of a big table costs the
// changes made meanwhile.
type listingFigures struct {
	Locks        int    `json:"locks"`
	QuietP99Ms   figure `json:"quiet_p99_ms"`   // changes alone
	ListingP99Ms figure `json:"listing_p99_ms"` // changes while full listings run back to back
	QuietRSSMB   figure `json:"quiet_peak_rss_mb"`
	ListingRSSMB figure `json:"listing_peak_rss_mb"`
	ListingMs    figure `json:"listing_ms"` // one full GET /locks, read to its end
	ListingBytes int64  `json:"listing_bytes"`
}

// benchListing writes a state file of cfg.listing locks, starts the
// server on it, and measures a client's changes (take and give back its
// own lock) alone, then while another client reads GET /locks whole,
// again and again: their p99 and the server's peak memory, alternating.
func benchListing(cfg config, dir string, r *report) error {
	n := cfg.listing
	listDir := filepath.Join(dir, "listing")
	if err := os.MkdirAll(listDir, 0o750); err != nil {
		return err
	}
	state := filepath.Join(listDir, "locks.yml")
	fmt.Fprintf(os.Stderr, "bench: writing a state file of %d locks...\n", n)
	if err := writeTable(state, n); err != nil {
		return err
	}
	p, _, err := startLocker(cfg, listDir)
	if err != nil {
		return err
	}
	defer func() { _ = p.stop() }()
	f := listingFigures{Locks: n}
	var quiet, busy, quietRSS, busyRSS, took []float64
	for range cfg.runs {
		p99, rss, _, _, err := changesWhile(p, cfg.duration, false)
		if err != nil {
			return err
		}
		quiet, quietRSS = append(quiet, p99), append(quietRSS, rss)
		p99, rss, listMs, size, err := changesWhile(p, cfg.duration, true)
		if err != nil {
			return err
		}
		busy, busyRSS, took = append(busy, p99), append(busyRSS, rss), append(took, listMs)
		f.ListingBytes = size
	}
	f.QuietP99Ms, f.ListingP99Ms = newFigure("ms", quiet), newFigure("ms", busy)
	f.QuietRSSMB, f.ListingRSSMB = newFigure("MB", quietRSS), newFigure("MB", busyRSS)
	f.ListingMs = newFigure("ms", took)
	r.Listing = &f
	return nil
}

// changesWhile runs one client's changes for d, with full listings going
// on beside them if listing is set, and returns the changes' p99 (ms),
// the server's peak RSS (MB, sampled every 20 ms), and the median time
// and the size of a listing.
func changesWhile(p *process, d time.Duration, listing bool) (p99, peakRSS, listMs float64, size int64, err error) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var peak float64
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, p.rssMB())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	var times []float64
	var listErr error
	if listing {
		wg.Go(func() {
			c := newClient(p.url)
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				resp, err := c.http.Get(p.url + "/locks")
				if err != nil {
					listErr = err
					return
				}
				size, err = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					listErr = fmt.Errorf("GET /locks = %d, %v", resp.StatusCode, err)
					return
				}
				times = append(times, ms(time.Since(t0)))
			}
		})
	}
	res, err := loop([]string{p.url}, 1, d, ownLock("listing"))
	close(stop)
	wg.Wait()
	if err == nil {
		err = listErr
	}
	if listing && len(times) == 0 && err == nil {
		err = fmt.Errorf("no listing of the table finished within %v", d)
	}
	return ms(percentile(res.latencies, 99)), peak, median(times), size, err
}

// writeTable writes a state file of n locks held, as a server would, and
// its empty journal. The file's seal is cut off, as if an earlier Locker
// had written it, so that earlier binaries read it too (to compare).
func writeTable(path string, n int) error {
	at := time.Now().UTC().Truncate(time.Millisecond)
	st := statefile.State{LastToken: uint64(n), Locks: make(map[string]lock.Lock, n)}
	for i := range n {
		st.Locks[fmt.Sprintf("team-%03d/env-%07d", i%500, i)] = lock.Lock{Key: "deploy", Token: uint64(i + 1), AcquiredAt: at,
			Holders: []lock.Holder{{Name: fmt.Sprintf("job-%d", i), Hold: lock.Hold{Count: 1, Since: at, Note: "https://ci.example.com/builds/1234"}}}}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := statefile.Encode(w, st); err != nil {
		_ = f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := cutLastLine(path); err != nil {
		return err
	}
	return os.WriteFile(path+".journal", nil, 0o600)
}

// cutLastLine removes the last line of the file at path.
func cutLastLine(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	tail := make([]byte, min(info.Size(), 4096))
	if _, err := f.ReadAt(tail, info.Size()-int64(len(tail))); err != nil {
		return err
	}
	i := bytes.LastIndexByte(tail[:len(tail)-1], '\n')
	return f.Truncate(info.Size() - int64(len(tail)-i-1))
}
