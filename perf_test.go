package main

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/atomicfile"
)

// unsyncedDisk is the real file system with journal syncs skipped, so that
// a benchmark measures the request path's own CPU, not the disk.
type unsyncedDisk struct{ atomicfile.OS }

func (unsyncedDisk) OpenInPlace(name string) (atomicfile.InPlaceFile, error) {
	f, err := atomicfile.OS{}.OpenInPlace(name)
	if err != nil {
		return nil, err
	}
	return unsyncedJournal{f}, nil
}

type unsyncedJournal struct{ atomicfile.InPlaceFile }

func (unsyncedJournal) Sync() error { return nil }

// BenchmarkRequestPath is one PUT and one DELETE through the whole router,
// as the parallel benchmark sends them, with the journal written but not
// synced: the CPU and allocations a change costs besides HTTP and fsync.
//
//	go test -run '^$' -bench RequestPath -benchmem
func BenchmarkRequestPath(b *testing.B) {
	ts := newTestServer(b, unsyncedDisk{}, "", "")
	const body = `{"key":"k1"}`
	b.ReportAllocs()
	for b.Loop() {
		for _, method := range []string{"PUT", "DELETE"} {
			rec := httptest.NewRecorder()
			ts.handler.ServeHTTP(rec, httptest.NewRequest(method, "/lock/parallel-1", strings.NewReader(body)))
			if rec.Code != 200 {
				b.Fatalf("%s = %d %s", method, rec.Code, rec.Body)
			}
		}
	}
}
