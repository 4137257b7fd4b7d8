package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/testutil"
)

func TestAPI(t *testing.T) {
	putA := request{"PUT", "/lock/l", `{"key": "k", "lock_by": "a"}`}
	big := `{"key": "` + strings.Repeat("x", maxFieldBytes+1) + `"}`
	tests := []struct {
		name       string
		setup      []request
		req        request
		wantStatus int
		wantLock   *shown           // for 200 replies to PUT, DELETE and GET /lock
		wantError  string           // for error replies: part of the message
		wantLocks  map[string]shown // GET /locks afterwards
	}{
		{
			name: "PUT takes a free lock", req: putA, wantStatus: 200,
			wantLock:  &shown{Name: "l", Key: "k", LockedBy: map[string]int{"a": 1}},
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "PUT without lock_by holds as the key", req: request{"PUT", "/lock/l", `{"key": "k"}`}, wantStatus: 200,
			wantLock:  &shown{Name: "l", Key: "k", LockedBy: map[string]int{"k": 1}},
			wantLocks: map[string]shown{"l": held("k", map[string]int{"k": 1})},
		},
		{
			name: "empty lock_by holds as the key", req: request{"PUT", "/lock/l", `{"key": "k", "lock_by": ""}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"k": 1})},
		},
		{
			name: "PUT again with the same key counts up", setup: []request{putA}, req: putA, wantStatus: 200,
			wantLock:  &shown{Name: "l", Key: "k", LockedBy: map[string]int{"a": 2}},
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 2})},
		},
		{
			name: "holders sharing a key coexist", setup: []request{putA},
			req: request{"PUT", "/lock/l", `{"key": "k", "lock_by": "b"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1, "b": 1})},
		},
		{
			name: "PUT with another key is locked out", setup: []request{putA},
			req: request{"PUT", "/lock/l", `{"key": "other", "lock_by": "b"}`}, wantStatus: 423,
			wantError: `held with key "k" by a (1)`,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "locked_by is lock_by", req: request{"PUT", "/lock/l", `{"key": "k", "locked_by": "a"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "requestor is lock_by", req: request{"PUT", "/lock/l", `{"key": "k", "requestor": "a"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "aliases that agree are fine", req: request{"PUT", "/lock/l", `{"key": "k", "lock_by": "a", "locked_by": "a", "requestor": "a"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "aliases that disagree are refused", req: request{"PUT", "/lock/l", `{"key": "k", "lock_by": "a", "requestor": "b"}`}, wantStatus: 400,
			wantError: `"lock_by" is "a" but "requestor" is "b"`, wantLocks: map[string]shown{},
		},
		{
			name: "DELETE takes back one count", setup: []request{putA, putA},
			req: request{"DELETE", "/lock/l", `{"key": "k", "lock_by": "a"}`}, wantStatus: 200,
			wantLock:  &shown{Name: "l", Key: "k", LockedBy: map[string]int{"a": 1}},
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "DELETE with all takes back every count", setup: []request{putA, putA, {"PUT", "/lock/l", `{"key": "k", "lock_by": "b"}`}},
			req: request{"DELETE", "/lock/l", `{"key": "k", "lock_by": "a", "all": true}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"b": 1})},
		},
		{
			name: "last DELETE frees the lock", setup: []request{putA},
			req: request{"DELETE", "/lock/l", `{"key": "k", "requestor": "a"}`}, wantStatus: 200,
			wantLock:  &shown{Name: "l", Key: "", LockedBy: map[string]int{}},
			wantLocks: map[string]shown{},
		},
		{
			name: "DELETE of a free lock is fine", req: request{"DELETE", "/lock/l", `{"key": "k"}`}, wantStatus: 200,
			wantLocks: map[string]shown{},
		},
		{
			name: "DELETE with another key is locked out", setup: []request{putA},
			req: request{"DELETE", "/lock/l", `{"key": "other", "lock_by": "a"}`}, wantStatus: 423,
			wantError: "a release must send the key", wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "DELETE by someone holding nothing changes nothing", setup: []request{putA},
			req: request{"DELETE", "/lock/l", `{"key": "k", "lock_by": "b"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "GET a held lock", setup: []request{putA}, req: request{"GET", "/lock/l", ""}, wantStatus: 200,
			wantLock:  &shown{Name: "l", Key: "k", LockedBy: map[string]int{"a": 1}},
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "GET a free lock", req: request{"GET", "/lock/nobody", ""}, wantStatus: 200,
			wantLock:  &shown{Name: "nobody", Key: "", LockedBy: map[string]int{}},
			wantLocks: map[string]shown{},
		},
		{
			name: "escaped slash is part of the name", req: request{"PUT", "/lock/a%2Fb", `{"key": "k"}`}, wantStatus: 200,
			wantLock:  &shown{Name: "a/b", Key: "k", LockedBy: map[string]int{"k": 1}},
			wantLocks: map[string]shown{"a/b": held("k", map[string]int{"k": 1})},
		},
		{
			name: "escaped UTF-8 name", req: request{"PUT", "/lock/d%C3%A9ploy", `{"key": "k"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"déploy": held("k", map[string]int{"k": 1})},
		},
		{
			name: "escaped space name", req: request{"PUT", "/lock/%20", `{"key": "k"}`}, wantStatus: 200,
			wantLocks: map[string]shown{" ": held("k", map[string]int{"k": 1})},
		},
		{
			name: "dots are a name, not a path", req: request{"PUT", "/lock/..", `{"key": "k"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"..": held("k", map[string]int{"k": 1})},
		},
		{
			name: "escaped and raw slash name the same lock", setup: []request{{"PUT", "/lock/a/b", `{"key": "k"}`}},
			req: request{"DELETE", "/lock/a%2Fb", `{"key": "k"}`}, wantStatus: 200, wantLocks: map[string]shown{},
		},
		{
			name: "invalid UTF-8 name", req: request{"PUT", "/lock/%FF", `{"key": "k"}`}, wantStatus: 400,
			wantError: "not valid UTF-8", wantLocks: map[string]shown{},
		},
		{
			name: "name too long", req: request{"PUT", "/lock/" + strings.Repeat("n", maxFieldBytes+1), `{"key": "k"}`}, wantStatus: 400,
			wantError: "the limit is 1024", wantLocks: map[string]shown{},
		},
		{name: "no body", req: request{"PUT", "/lock/l", ""}, wantStatus: 400, wantError: "no body", wantLocks: map[string]shown{}},
		{name: "not JSON", req: request{"PUT", "/lock/l", "key=k"}, wantStatus: 400, wantError: "not valid JSON", wantLocks: map[string]shown{}},
		{name: "truncated JSON", req: request{"PUT", "/lock/l", `{"key": "k"`}, wantStatus: 400, wantError: "not valid JSON", wantLocks: map[string]shown{}},
		{name: "trailing garbage", req: request{"PUT", "/lock/l", `{"key": "k"} x`}, wantStatus: 400, wantError: "data after the JSON object", wantLocks: map[string]shown{}},
		{name: "two objects", req: request{"PUT", "/lock/l", `{"key": "k"}{"key": "k"}`}, wantStatus: 400, wantError: "data after the JSON object", wantLocks: map[string]shown{}},
		{name: "array body", req: request{"PUT", "/lock/l", `["k"]`}, wantStatus: 400, wantError: "must be a JSON object", wantLocks: map[string]shown{}},
		{name: "null body", req: request{"PUT", "/lock/l", `null`}, wantStatus: 400, wantError: "must be a JSON object", wantLocks: map[string]shown{}},
		{name: "key missing", req: request{"PUT", "/lock/l", `{"lock_by": "a"}`}, wantStatus: 400, wantError: `non-empty "key"`, wantLocks: map[string]shown{}},
		{name: "key empty", req: request{"PUT", "/lock/l", `{"key": ""}`}, wantStatus: 400, wantError: `non-empty "key"`, wantLocks: map[string]shown{}},
		{name: "key null", req: request{"PUT", "/lock/l", `{"key": null}`}, wantStatus: 400, wantError: `non-empty "key"`, wantLocks: map[string]shown{}},
		{name: "key a number", req: request{"PUT", "/lock/l", `{"key": 5}`}, wantStatus: 400, wantError: `"key" must be a string`, wantLocks: map[string]shown{}},
		{name: "key an object", req: request{"PUT", "/lock/l", `{"key": {}}`}, wantStatus: 400, wantError: `"key" must be a string`, wantLocks: map[string]shown{}},
		{name: "lock_by a number", req: request{"PUT", "/lock/l", `{"key": "k", "lock_by": 1}`}, wantStatus: 400, wantError: `"lock_by" must be a string`, wantLocks: map[string]shown{}},
		{name: "key too long", req: request{"PUT", "/lock/l", big}, wantStatus: 400, wantError: `"key" is 1025 bytes long`, wantLocks: map[string]shown{}},
		{name: "misspelt field", req: request{"PUT", "/lock/l", `{"key": "k", "lokc_by": "a"}`}, wantStatus: 400, wantError: `unknown field "lokc_by"`, wantLocks: map[string]shown{}},
		{name: "field names are exact", req: request{"PUT", "/lock/l", `{"KEY": "k"}`}, wantStatus: 400, wantError: `unknown field "KEY"`, wantLocks: map[string]shown{}},
		{name: "all is for DELETE", req: request{"PUT", "/lock/l", `{"key": "k", "all": true}`}, wantStatus: 400, wantError: `unknown field "all"`, wantLocks: map[string]shown{}},
		{
			name: "all must be a boolean", setup: []request{putA},
			req: request{"DELETE", "/lock/l", `{"key": "k", "lock_by": "a", "all": "yes"}`}, wantStatus: 400,
			wantError: `"all" must be true or false`, wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "DELETE needs a key", setup: []request{putA},
			req: request{"DELETE", "/lock/l", `{"lock_by": "a"}`}, wantStatus: 400,
			wantError: `non-empty "key"`, wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "body over the limit", req: request{"PUT", "/lock/l", `{"key": "` + strings.Repeat("x", maxBodyBytes) + `"}`}, wantStatus: 413,
			wantError: "over 65536 bytes", wantLocks: map[string]shown{},
		},
		{name: "wait not a duration", req: request{"PUT", "/lock/l?wait=abc", `{"key": "k"}`}, wantStatus: 400, wantError: `wait must be a positive duration such as "30s"`, wantLocks: map[string]shown{}},
		{name: "wait negative", req: request{"PUT", "/lock/l?wait=-5s", `{"key": "k"}`}, wantStatus: 400, wantError: `got "-5s"`, wantLocks: map[string]shown{}},
		{name: "wait without unit", req: request{"PUT", "/lock/l?wait=10", `{"key": "k"}`}, wantStatus: 400, wantError: `got "10"`, wantLocks: map[string]shown{}},
		{name: "wait in the body, bad", req: request{"PUT", "/lock/l", `{"key": "k", "wait": "soon"}`}, wantStatus: 400, wantError: `got "soon"`, wantLocks: map[string]shown{}},
		{name: "wait as a number", req: request{"PUT", "/lock/l", `{"key": "k", "wait": 30}`}, wantStatus: 400, wantError: `"wait" must be a duration string`, wantLocks: map[string]shown{}},
		{name: "wait twice", req: request{"PUT", "/lock/l?wait=1s&wait=2s", `{"key": "k"}`}, wantStatus: 400, wantError: "given 2 times", wantLocks: map[string]shown{}},
		{name: "wait in query and body disagree", req: request{"PUT", "/lock/l?wait=1s", `{"key": "k", "wait": "2s"}`}, wantStatus: 400, wantError: "give it once", wantLocks: map[string]shown{}},
		{name: "wait zero answers at once", setup: []request{putA}, req: request{"PUT", "/lock/l?wait=0", `{"key": "other"}`}, wantStatus: 423, wantError: "send ?wait=5m", wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})}},
		{name: "misspelt query parameter", req: request{"PUT", "/lock/l?wiat=5m", `{"key": "k"}`}, wantStatus: 400, wantError: `unknown query parameter "wiat"; PUT /lock/<name> accepts ?wait=<duration>`, wantLocks: map[string]shown{}},
		{name: "ttl not a duration", req: request{"PUT", "/lock/l", `{"key": "k", "ttl": "abc"}`}, wantStatus: 400, wantError: `ttl must be a positive duration`, wantLocks: map[string]shown{}},
		{name: "ttl negative", req: request{"PUT", "/lock/l", `{"key": "k", "ttl": "-5s"}`}, wantStatus: 400, wantError: `got "-5s"`, wantLocks: map[string]shown{}},
		{name: "ttl zero", req: request{"PUT", "/lock/l", `{"key": "k", "ttl": "0s"}`}, wantStatus: 400, wantError: `got "0s"`, wantLocks: map[string]shown{}},
		{name: "ttl without unit", req: request{"PUT", "/lock/l", `{"key": "k", "ttl": "10"}`}, wantStatus: 400, wantError: `got "10": 10 has no unit: write 10s, 10m or 10h`, wantLocks: map[string]shown{}},
		{name: "ttl in days", req: request{"PUT", "/lock/l", `{"key": "k", "ttl": "1d"}`}, wantStatus: 400, wantError: `got "1d": d is not a unit here: write 24h for 1d`, wantLocks: map[string]shown{}},
		{name: "wait without unit", req: request{"PUT", "/lock/l?wait=5", `{"key": "k"}`}, wantStatus: 400, wantError: `got "5": 5 has no unit: write 5s, 5m or 5h`, wantLocks: map[string]shown{}},
		{name: "note too long", req: request{"PUT", "/lock/l", `{"key": "k", "note": "` + strings.Repeat("n", maxFieldBytes+1) + `"}`}, wantStatus: 400, wantError: `"note" is 1025 bytes long`, wantLocks: map[string]shown{}},
		{name: "note not a string", req: request{"PUT", "/lock/l", `{"key": "k", "note": ["x"]}`}, wantStatus: 400, wantError: `"note" must be a string`, wantLocks: map[string]shown{}},
		{
			name: "force not a boolean", setup: []request{putA}, req: request{"DELETE", "/lock/l?force=maybe", ""}, wantStatus: 400,
			wantError: `force must be true or false, e.g. DELETE /lock/<name>?force=true (got "maybe")`, wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "force needs no key", setup: []request{putA, {"PUT", "/lock/l", `{"key": "k", "lock_by": "b"}`}},
			req: request{"DELETE", "/lock/l?force=true", ""}, wantStatus: 200, wantLocks: map[string]shown{},
		},
		{
			name: "force=false still needs a key", setup: []request{putA},
			req: request{"DELETE", "/lock/l?force=false", ""}, wantStatus: 400, wantError: "no body", wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{name: "force is for DELETE", req: request{"PUT", "/lock/l?force=true", `{"key": "k"}`}, wantStatus: 400, wantError: `unknown query parameter "force"`, wantLocks: map[string]shown{}},
		{
			name: "PATCH renews a lease", setup: []request{putA},
			req: request{"PATCH", "/lock/l", `{"key": "k", "lock_by": "a", "ttl": "10m"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "PATCH needs a ttl", setup: []request{putA},
			req: request{"PATCH", "/lock/l", `{"key": "k", "lock_by": "a"}`}, wantStatus: 400, wantError: `"ttl": "10m"`,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "PATCH by a non-holder", setup: []request{putA},
			req: request{"PATCH", "/lock/l", `{"key": "k", "lock_by": "b", "ttl": "10m"}`}, wantStatus: 423, wantError: "no lease to renew",
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{
			name: "PATCH with the wrong key", setup: []request{putA},
			req: request{"PATCH", "/lock/l", `{"key": "other", "lock_by": "a", "ttl": "10m"}`}, wantStatus: 423, wantError: "no lease to renew",
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})},
		},
		{name: "PATCH takes no note", req: request{"PATCH", "/lock/l", `{"key": "k", "ttl": "1m", "note": "x"}`}, wantStatus: 400, wantError: `unknown field "note"`, wantLocks: map[string]shown{}},
		{name: "unknown route", req: request{"GET", "/lockz", ""}, wantStatus: 404, wantError: "GET /locks", wantLocks: map[string]shown{}},
		{name: "lock without a name", req: request{"PUT", "/lock/", `{"key": "k"}`}, wantStatus: 404, wantError: "no such endpoint", wantLocks: map[string]shown{}},
		{name: "POST on a lock", req: request{"POST", "/lock/l", `{"key": "k"}`}, wantStatus: 405, wantError: "GET, HEAD, PUT, PATCH or DELETE", wantLocks: map[string]shown{}},
		// Inputs that encoding/json or net/http would take quietly.
		{name: "a field given twice", req: request{"PUT", "/lock/l", `{"key": "a", "key": "b"}`}, wantStatus: 400,
			wantError: `the field "key" is given twice`, wantLocks: map[string]shown{}},
		{name: "a requestor given twice", req: request{"PUT", "/lock/l", `{"key": "a", "lock_by": "x", "lock_by": "y"}`}, wantStatus: 400,
			wantError: `the field "lock_by" is given twice`, wantLocks: map[string]shown{}},
		{name: "invalid UTF-8 in a key", req: request{"PUT", "/lock/l", "{\"key\": \"a\xffb\"}"}, wantStatus: 400,
			wantError: `"key" is not valid UTF-8`, wantLocks: map[string]shown{}},
		{name: "half a surrogate pair in a note", req: request{"PUT", "/lock/l", `{"key": "k", "note": "x\ud800y"}`}, wantStatus: 400,
			wantError: `"note" is not valid UTF-8`, wantLocks: map[string]shown{}},
		{name: "an escaped U+FFFD is text", req: request{"PUT", "/lock/l", `{"key": "k\ufffd", "lock_by": "a"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k\ufffd", map[string]int{"a": 1})}},
		{name: "a tab in a key", req: request{"PUT", "/lock/l", `{"key": "a\tb"}`}, wantStatus: 400,
			wantError: `"key" holds the control character U+0009`, wantLocks: map[string]shown{}},
		{name: "a NUL in a requestor", req: request{"PUT", "/lock/l", `{"key": "k", "lock_by": "a\u0000"}`}, wantStatus: 400,
			wantError: `"lock_by" holds the control character U+0000`, wantLocks: map[string]shown{}},
		{name: "a newline in a lock name", req: request{"PUT", "/lock/a%0Ab", `{"key": "k"}`}, wantStatus: 400,
			wantError: "the lock name holds the control character U+000A", wantLocks: map[string]shown{}},
		{name: "a lease under a second", req: request{"PUT", "/lock/l", `{"key": "k", "ttl": "500ms"}`}, wantStatus: 400,
			wantError: "a lease must be at least 1s", wantLocks: map[string]shown{}},
		{name: "a lease over LOCKER_MAX_TTL", req: request{"PUT", "/lock/l", `{"key": "k", "ttl": "1000000h"}`}, wantStatus: 400,
			wantError: "over LOCKER_MAX_TTL (168h0m0s)", wantLocks: map[string]shown{}},
		{name: "a renewal over LOCKER_MAX_TTL", setup: []request{putA}, req: request{"PATCH", "/lock/l", `{"key": "k", "lock_by": "a", "ttl": "200h"}`}, wantStatus: 400,
			wantError: "over LOCKER_MAX_TTL", wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})}},
		{name: "GET with a query parameter it does not take", setup: []request{putA}, req: request{"GET", "/lock/l?force=true", ""}, wantStatus: 400,
			wantError: `unknown query parameter "force"; GET /lock/<name> accepts ?free=true&wait=<duration>`, wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})}},
		{name: "GET /locks with a query parameter", req: request{"GET", "/locks?all=1", ""}, wantStatus: 400,
			wantError: `unknown query parameter "all"; GET /locks accepts ?limit=`, wantLocks: map[string]shown{}},
		{name: "a page of no locks", req: request{"GET", "/locks?limit=0", ""}, wantStatus: 400,
			wantError: `?limit="0" is not a number of locks from 1 to 10000`, wantLocks: map[string]shown{}},
		{name: "a page of too many locks", req: request{"GET", "/locks?limit=10001", ""}, wantStatus: 400,
			wantError: `?limit="10001" is not a number of locks from 1 to 10000`, wantLocks: map[string]shown{}},
		{name: "a page size that is not a number", req: request{"GET", "/locks?limit=ten", ""}, wantStatus: 400,
			wantError: `?limit="ten" is not a number`, wantLocks: map[string]shown{}},
		{name: "a prefix with a newline", req: request{"GET", "/locks?prefix=a%0A", ""}, wantStatus: 400,
			wantError: `?prefix= holds the control character U+000A`, wantLocks: map[string]shown{}},
		{name: "a cursor that is not UTF-8", req: request{"GET", "/locks?after=%FF", ""}, wantStatus: 400,
			wantError: `?after= is not valid UTF-8`, wantLocks: map[string]shown{}},
		{name: "a cursor longer than any name", req: request{"GET", "/locks?after=" + strings.Repeat("a", 1025), ""}, wantStatus: 400,
			wantError: `?after= is 1025 bytes long; the limit is 1024`, wantLocks: map[string]shown{}},
		{name: "HEAD answers as GET", setup: []request{putA}, req: request{"HEAD", "/lock/l", ""}, wantStatus: 200,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})}},
		{name: "a limit of 0", req: request{"PUT", "/lock/l", `{"key": "k", "limit": 0}`}, wantStatus: 400, wantError: `"limit" is the most holds the lock may have at once (a semaphore's permits), a whole number from 1 up`, wantLocks: map[string]shown{}},
		{name: "a negative limit", req: request{"PUT", "/lock/l", `{"key": "k", "limit": -2}`}, wantStatus: 400, wantError: `(got -2)`, wantLocks: map[string]shown{}},
		{name: "a limit as a string", req: request{"PUT", "/lock/l", `{"key": "k", "limit": "3"}`}, wantStatus: 400, wantError: `(got "3")`, wantLocks: map[string]shown{}},
		{name: "a limit on a release", req: request{"DELETE", "/lock/l", `{"key": "k", "limit": 3}`}, wantStatus: 400, wantError: `unknown field "limit"`, wantLocks: map[string]shown{}},
		{name: "another limit while held", setup: []request{{"PUT", "/lock/l", `{"key": "k", "lock_by": "a", "limit": 2}`}},
			req: request{"PUT", "/lock/l", `{"key": "k", "lock_by": "b", "limit": 3}`}, wantStatus: 409, wantError: `"l" is held under a limit of 2 holders`,
			wantLocks: map[string]shown{"l": held("k", map[string]int{"a": 1})}},
		{name: "a pool without members", req: request{"PUT", "/pool/staging", `{}`}, wantStatus: 400, wantError: `the body needs "members", a list of lock names`, wantLocks: map[string]shown{}},
		{name: "a pool of no members", req: request{"PUT", "/pool/staging", `{"members": []}`}, wantStatus: 400, wantError: `"members" is empty`, wantLocks: map[string]shown{}},
		{name: "a pool naming a member twice", req: request{"PUT", "/pool/staging", `{"members": ["s1", "s1"]}`}, wantStatus: 400, wantError: `"members" names "s1" twice`, wantLocks: map[string]shown{}},
		{name: "a pool with an unknown field", req: request{"PUT", "/pool/staging", `{"member": ["s1"]}`}, wantStatus: 400, wantError: `unknown field "member" in the body; PUT /pool/<pool> accepts "members"`, wantLocks: map[string]shown{}},
		{name: "a claim on no pool", req: request{"PUT", "/pool/nope/claim", `{"key": "k"}`}, wantStatus: 404, wantError: `there is no pool called "nope"; GET /pools lists them`, wantLocks: map[string]shown{}},
		{name: "a claim of no members", setup: []request{{"PUT", "/pool/p", `{"members": ["m1", "m2"]}`}}, req: request{"PUT", "/pool/p/claim", `{"key": "k", "count": 0}`}, wantStatus: 400,
			wantError: `"count" is how many members to claim, a whole number from 1 up (got 0)`, wantLocks: map[string]shown{}},
		{name: "a claim of more than the pool has", setup: []request{{"PUT", "/pool/p", `{"members": ["m1", "m2"]}`}}, req: request{"PUT", "/pool/p/claim", `{"key": "k", "count": 3}`}, wantStatus: 400,
			wantError: `the pool "p" has 2 members; a claim may take at most that many`, wantLocks: map[string]shown{}},
		{name: "a claim with a limit", setup: []request{{"PUT", "/pool/p", `{"members": ["m1"]}`}}, req: request{"PUT", "/pool/p/claim", `{"key": "k", "limit": 2}`}, wantStatus: 400,
			wantError: `unknown field "limit" in the body; PUT /pool/<pool>/claim accepts`, wantLocks: map[string]shown{}},
		{name: "a claim", setup: []request{{"PUT", "/pool/p", `{"members": ["m2", "m1"]}`}}, req: request{"PUT", "/pool/p/claim", `{"key": "k", "lock_by": "job"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"m1": held("k", map[string]int{"job": 1})}},
		{name: "removing no pool", req: request{"DELETE", "/pool/nope", ``}, wantStatus: 404, wantError: `there is no pool called "nope"`, wantLocks: map[string]shown{}},
		{name: "a set without its locks", req: request{"PUT", "/locks", `{"key": "k"}`}, wantStatus: 400, wantError: `the body needs "locks", a list of lock names`, wantLocks: map[string]shown{}},
		{name: "an empty set", req: request{"PUT", "/locks", `{"locks": [], "key": "k"}`}, wantStatus: 400, wantError: `"locks" is empty`, wantLocks: map[string]shown{}},
		{name: "a set naming a lock twice", req: request{"PUT", "/locks", `{"locks": ["a", "b", "a"], "key": "k"}`}, wantStatus: 400, wantError: `"locks" names "a" twice`, wantLocks: map[string]shown{}},
		{name: "a set of numbers", req: request{"PUT", "/locks", `{"locks": [1, 2], "key": "k"}`}, wantStatus: 400, wantError: `"locks" must be a list of lock names`, wantLocks: map[string]shown{}},
		{name: "a set that is a string", req: request{"PUT", "/locks", `{"locks": "a,b", "key": "k"}`}, wantStatus: 400, wantError: `"locks" must be a list of lock names`, wantLocks: map[string]shown{}},
		{name: "a set with an empty name", req: request{"PUT", "/locks", `{"locks": ["a", ""], "key": "k"}`}, wantStatus: 400, wantError: `"locks" holds an empty name`, wantLocks: map[string]shown{}},
		{name: "a set with a newline in a name", req: request{"PUT", "/locks", `{"locks": ["a\nb"], "key": "k"}`}, wantStatus: 400, wantError: `holds the control character U+000A`, wantLocks: map[string]shown{}},
		{name: "a set of 65 locks", req: request{"PUT", "/locks", `{"locks": [` + strings.TrimSuffix(strings.Repeat(`"x",`, 0)+setOf(65), ",") + `], "key": "k"}`}, wantStatus: 400,
			wantError: `"locks" names 65 locks; at most 64 (LOCKER_MAX_LOCKS_PER_REQUEST)`, wantLocks: map[string]shown{}},
		{name: "a set without a key", req: request{"PUT", "/locks", `{"locks": ["a", "b"]}`}, wantStatus: 400, wantError: `the body needs a non-empty "key" string`, wantLocks: map[string]shown{}},
		{name: "a set with an unknown field", req: request{"PUT", "/locks", `{"locks": ["a"], "key": "k", "lock": "b"}`}, wantStatus: 400,
			wantError: `unknown field "lock" in the body; PUT /locks accepts "locks", "key"`, wantLocks: map[string]shown{}},
		{name: "a set with an unknown query parameter", req: request{"PUT", "/locks?force=true", `{"locks": ["a"], "key": "k"}`}, wantStatus: 400,
			wantError: `unknown query parameter "force"; PUT /locks accepts ?wait=`, wantLocks: map[string]shown{}},
		{name: "a set released with the wrong key", setup: []request{{"PUT", "/locks", `{"locks": ["a", "b"], "key": "k", "lock_by": "r"}`}},
			req: request{"DELETE", "/locks", `{"locks": ["a", "b"], "key": "other", "lock_by": "r"}`}, wantStatus: 423, wantError: `"a" is held with key "k"`,
			wantLocks: map[string]shown{"a": held("k", map[string]int{"r": 1}), "b": held("k", map[string]int{"r": 1})}},
		{name: "a set renewed", setup: []request{{"PUT", "/locks", `{"locks": ["a", "b"], "key": "k", "lock_by": "r", "ttl": "1h"}`}},
			req: request{"PATCH", "/locks", `{"locks": ["b", "a"], "key": "k", "lock_by": "r", "ttl": "2h"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"a": held("k", map[string]int{"r": 1}), "b": held("k", map[string]int{"r": 1})}},
		{name: "a set renewed by one who holds one of them only", setup: []request{{"PUT", "/lock/a", `{"key": "k", "lock_by": "r", "ttl": "1h"}`}},
			req: request{"PATCH", "/locks", `{"locks": ["a", "b"], "key": "k", "lock_by": "r", "ttl": "2h"}`}, wantStatus: 423, wantError: `r holds nothing on "b" with key "k"`,
			wantLocks: map[string]shown{"a": held("k", map[string]int{"r": 1})}},
		{name: "a set forced free", setup: []request{{"PUT", "/locks", `{"locks": ["a", "b"], "key": "k", "lock_by": "r"}`}},
			req: request{"DELETE", "/locks?force=true", `{"locks": ["a", "b"]}`}, wantStatus: 200, wantLocks: map[string]shown{}},
		{name: "a set taken", req: request{"PUT", "/locks", `{"locks": ["b", "a"], "key": "k", "lock_by": "r"}`}, wantStatus: 200,
			wantLocks: map[string]shown{"a": held("k", map[string]int{"r": 1}), "b": held("k", map[string]int{"r": 1})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestServer(t, nil, "", "")
			for _, r := range tt.setup {
				ts.mustSend(t, r)
			}
			before := testutil.OnDisk(t, ts.path)

			rec := ts.send(t, tt.req)
			if rec.Code != tt.wantStatus {
				t.Fatalf("%s %s %s = %d %s; want %d", tt.req.method, tt.req.target, tt.req.body, rec.Code, rec.Body, tt.wantStatus)
			}
			if rec.Code == http.StatusOK {
				var got struct {
					shown
					Response *string `json:"response"`
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
					t.Fatalf("reply %q: %v", rec.Body, err)
				}
				if tt.wantLock != nil && !reflect.DeepEqual(got.shown, *tt.wantLock) {
					t.Errorf("reply = %+v; want %+v", got.shown, *tt.wantLock)
				}
				if tt.req.method != "GET" && tt.req.method != "HEAD" && (got.Response == nil || *got.Response == "") {
					t.Errorf("reply %s has no \"response\" sentence", rec.Body)
				}
			} else {
				if msg := errorOf(t, rec); !strings.Contains(msg, tt.wantError) {
					t.Errorf("error = %q; want it to contain %q", msg, tt.wantError)
				}
				if after := testutil.OnDisk(t, ts.path); after != before {
					t.Errorf("a refused request changed the files:\n%s", after)
				}
			}
			if got, want := ts.locks(t), named(tt.wantLocks); !reflect.DeepEqual(got, want) {
				t.Errorf("GET /locks = %+v; want %+v", got, want)
			}
		})
	}
}

func TestMethodNotAllowedSaysWhatIsAllowed(t *testing.T) {
	ts := newTestServer(t, nil, "", "")
	for target, want := range map[string]string{"/lock/x": "GET, HEAD, PUT, PATCH, DELETE", "/locks": "GET, HEAD, PUT, PATCH, DELETE"} {
		rec := ts.send(t, request{"POST", target, ""})
		if got := rec.Header().Get("Allow"); rec.Code != 405 || got != want {
			t.Errorf("POST %s = %d, Allow %q; want 405, Allow %q", target, rec.Code, got, want)
		}
	}
}

func TestBodyTooLargeWithoutContentLength(t *testing.T) {
	ts := newTestServer(t, nil, "", "")
	body := io.MultiReader(strings.NewReader(`{"key": "`), strings.NewReader(strings.Repeat("x", 1<<20)), strings.NewReader(`"}`))
	req := httptest.NewRequest("PUT", "/lock/l", io.NopCloser(body))
	req.ContentLength = -1 // chunked: the server cannot know the size up front
	rec := httptest.NewRecorder()
	ts.handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("PUT with a 1 MiB chunked body = %d %s; want 413", rec.Code, rec.Body)
	}
	errorOf(t, rec)
}

func TestAuth(t *testing.T) {
	ts := newTestServer(t, nil, "ci", "s3cret")
	tests := []struct {
		name       string
		setAuth    func(*http.Request)
		target     string
		wantStatus int
	}{
		{"no credentials", func(*http.Request) {}, "/locks", 401},
		{"wrong user", func(r *http.Request) { r.SetBasicAuth("admin", "s3cret") }, "/locks", 401},
		{"wrong password", func(r *http.Request) { r.SetBasicAuth("ci", "guess") }, "/locks", 401},
		{"password prefix", func(r *http.Request) { r.SetBasicAuth("ci", "s3cre") }, "/locks", 401},
		{"not basic", func(r *http.Request) { r.Header.Set("Authorization", "Bearer s3cret") }, "/locks", 401},
		{"unknown route still needs auth", func(*http.Request) {}, "/nope", 401},
		{"right credentials", func(r *http.Request) { r.SetBasicAuth("ci", "s3cret") }, "/locks", 200},
		{"right credentials, unknown route", func(r *http.Request) { r.SetBasicAuth("ci", "s3cret") }, "/nope", 404},
	}
	var firstBody string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", tt.target, nil)
			tt.setAuth(req)
			rec := httptest.NewRecorder()
			ts.handler.ServeHTTP(rec, req)
			if rec.Code != tt.wantStatus {
				t.Fatalf("GET %s = %d; want %d", tt.target, rec.Code, tt.wantStatus)
			}
			if rec.Code != 401 {
				return
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != `Basic realm="locker"` {
				t.Errorf("WWW-Authenticate = %q", got)
			}
			errorOf(t, rec)
			// Every refusal looks the same: nothing tells which part was wrong.
			if firstBody == "" {
				firstBody = rec.Body.String()
			} else if rec.Body.String() != firstBody {
				t.Errorf("401 body = %q; want the same as %q", rec.Body, firstBody)
			}
		})
	}
}
