package main

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestSetOverHTTP: over the real server, a set that waits for a lock held
// by someone else is answered 200 with both locks once it is given back,
// and DELETE /locks gives both back in one request.
func TestSetOverHTTP(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	if status, body := ls.call(t, "PUT", "/lock/prod-app", `{"key": "hotfix"}`); status != http.StatusOK {
		t.Fatalf("PUT /lock/prod-app = %d %s", status, body)
	}
	done := testutil.PutAsync(context.Background(), ls.url, "/locks?wait=20s", `{"locks": ["prod-db", "prod-app"], "key": "deploy", "lock_by": "deploy-43"}`)
	testutil.WaitFor(t, "the set to wait for prod-app", func() bool { return ls.waiting(t, "prod-app") == 1 })
	if status, body := ls.call(t, "GET", "/lock/prod-db", ""); status != http.StatusOK || !strings.Contains(string(body), `"key":"deploy","requestor":"deploy-43"`) {
		t.Errorf("prod-db while the set waits = %d %s; want the set in its queue", status, body)
	}
	if status, body := ls.call(t, "DELETE", "/lock/prod-app", `{"key": "hotfix"}`); status != http.StatusOK {
		t.Fatalf("DELETE /lock/prod-app = %d %s", status, body)
	}
	var got testutil.PutResult
	select {
	case got = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the set was not granted once prod-app was given back")
	}
	var reply setReply
	if err := json.Unmarshal(got.Body, &reply); got.Status != http.StatusOK || err != nil ||
		reply.Locks["prod-db"].LockedBy["deploy-43"] != 1 || reply.Locks["prod-app"].LockedBy["deploy-43"] != 1 {
		t.Fatalf("the set's answer = %d %s; want both locks held by deploy-43", got.Status, got.Body)
	}
	status, body := ls.call(t, "DELETE", "/locks", `{"locks": ["prod-app", "prod-db"], "key": "deploy", "lock_by": "deploy-43"}`)
	if status != http.StatusOK || !strings.Contains(string(body), `"released":{"prod-app":1,"prod-db":1}`) {
		t.Errorf("DELETE /locks = %d %s; want one count of each given back", status, body)
	}
	if locks := ls.listLocks(t); len(locks) != 0 {
		t.Errorf("GET /locks after = %v; want nothing held", locks)
	}
}
