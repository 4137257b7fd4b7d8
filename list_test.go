package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
)

// TestListingOverHTTP: over the real server, GET /locks without a limit
// answers what an encoded map of every lock would be, byte for byte (the
// original's clients parse it), though it is written a page at a time;
// with ?limit= the Link headers lead through every lock once.
func TestListingOverHTTP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	st := statefile.State{Seq: 0, LastToken: 3000, Locks: map[string]lock.Lock{}}
	for i := range 3000 {
		st.Locks[fmt.Sprintf("team-%d/lock-%04d", i%3, i)] = lock.Lock{Key: "k", Token: uint64(i + 1),
			Holders: []lock.Holder{{Name: "job <&>", Hold: lock.Hold{Count: 1, Note: "https://ci.example.com/?a=1&b=2"}}}}
	}
	var file bytes.Buffer
	if err := statefile.Encode(&file, st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, file.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".journal", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": path})

	status, body := ls.call(t, "GET", "/locks", "")
	if status != http.StatusOK {
		t.Fatalf("GET /locks = %d %s", status, body)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(body, &all); err != nil {
		t.Fatalf("GET /locks: %v", err)
	}
	var again bytes.Buffer
	enc := json.NewEncoder(&again)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(all); err != nil {
		t.Fatal(err)
	}
	if len(all) != len(st.Locks) || !bytes.Equal(body, again.Bytes()) {
		t.Fatalf("GET /locks: %d locks, %d bytes; want %d locks, the %d bytes of the map encoded", len(all), len(body), len(st.Locks), again.Len())
	}

	var paged []string
	next := "/locks?limit=700&prefix=team-1/"
	for pages := 0; next != ""; pages++ {
		if pages > 10 {
			t.Fatal("the Link headers go on past every lock")
		}
		resp, err := ls.client.Get(ls.url + next)
		if err != nil {
			t.Fatal(err)
		}
		var page map[string]json.RawMessage
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("GET %s = %d, %v", next, resp.StatusCode, err)
		}
		if len(page) > 700 {
			t.Fatalf("GET %s: %d locks", next, len(page))
		}
		paged = append(paged, slices.Sorted(maps.Keys(page))...)
		next = ""
		if link := resp.Header.Get("Link"); link != "" {
			u, ok := strings.CutSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
			if !ok {
				t.Fatalf("Link: %s", link)
			}
			next = u
		}
	}
	var want []string
	for name := range all {
		if strings.HasPrefix(name, "team-1/") {
			want = append(want, name)
		}
	}
	slices.Sort(want)
	if !reflect.DeepEqual(paged, want) {
		t.Errorf("the pages of team-1/ hold %d locks; want the %d there are, in order", len(paged), len(want))
	}
}
