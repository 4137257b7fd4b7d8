package main

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/jsonbody"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// maxBodyBytes limits request bodies. A lock request is a few hundred bytes;
// the limit only has to stop a client from filling memory.
const maxBodyBytes = 64 << 10

// maxPriority bounds a request's priority, either way.
const maxPriority = 1000000

// maxFieldBytes limits lock names, keys, requestors and notes: each one is
// kept in memory, in every listing and in the state file.
const maxFieldBytes = 1024

// minTTL is the shortest lease a request may ask for.
const minTTL = time.Second

// bodyExample is shown in errors about request bodies.
const bodyExample = `{"key": "prod-cf", "lock_by": "my-job"}`

// requestorFields are the names a body may give the requestor: the original
// README says lock_by, the original server read requestor and the original
// resource sends locked_by.
var requestorFields = []string{"lock_by", "locked_by", "requestor"}

// bodyFields and queryParams list what each method on /lock/{name} accepts.
// Anything else is refused, so that a misspelt field is not ignored.
var (
	bodyFields = map[string][]string{
		http.MethodPut:    append([]string{"key"}, append(requestorFields, "ttl", "wait", "note", "limit", "supersede", "priority", "build", "end_with_build")...),
		http.MethodPatch:  append([]string{"key"}, append(requestorFields, "ttl")...),
		http.MethodDelete: append([]string{"key"}, append(requestorFields, "all", "reason")...),
	}
	// queryParams lists the query parameters each route takes, by method
	// and path as the API writes them, with an example for error messages.
	queryParams = map[string]struct {
		names   []string
		example string
	}{
		"PUT /lock/<name>":    {[]string{"wait"}, "?wait=<duration>, e.g. ?wait=5m"},
		"GET /lock/<name>":    {[]string{"wait", "free"}, "?free=true&wait=<duration>, to wait until the lock is free, e.g. ?free=true&wait=5m"},
		"DELETE /lock/<name>": {[]string{"force"}, "?force=true"},
		"GET /":               {[]string{"q", "held_over", "sort"}, "?q=<text to filter by>, ?held_over=<duration> and ?sort=name, e.g. ?q=prod&held_over=2h"},
		"GET /locks":          {[]string{"limit", "after", "prefix"}, "?limit=<locks per page>, ?after=<name> and ?prefix=<text>, e.g. ?prefix=prod-&limit=100"},
		"PUT /locks":          {[]string{"wait"}, "?wait=<duration>, e.g. ?wait=5m"},
		"DELETE /locks":       {[]string{"force"}, "?force=true"},
		"PUT " + claimPath:    {[]string{"wait"}, "?wait=<duration>, e.g. ?wait=5m"},
		"GET /history/<name>": {[]string{"limit", "before"}, "?limit=<events per page> and ?before=<event id>, e.g. ?limit=20"},
		"GET /history":        {[]string{"limit", "before", "by"}, "?limit=<events per page>, ?before=<event id> and ?by=<credential>, e.g. ?by=team-a-ci"},
		"GET /events":         {[]string{"lock", "pool", "last_event_id"}, "?lock=<name> or ?pool=<pool>, and ?last_event_id=<id>, e.g. ?lock=prod"},
	}
)

// claimPath is the route of a claim on a pool, as the API writes it, and
// claimFields the fields of its body.
const claimPath = "/pool/<pool>/claim"

var claimFields = append([]string{"key"}, append(requestorFields, "ttl", "wait", "note", "count", "supersede", "priority", "build", "end_with_build")...)

// maxPage is the most locks a page of GET /locks may ask for.
const maxPage = 10000

// maxIdempotencyKeyBytes limits an Idempotency-Key: a UUID is 36.
const maxIdempotencyKeyBytes = 255

// lockRequest is a request to change the lock in the path.
type lockRequest struct {
	engine.Request      // Key and Requestor always; TTL, Wait and Note on PUT
	All            bool // DELETE: release every count of Requestor
	Force          bool // DELETE: release every holder; no key needed
	// IfMatch is the If-Match header's condition (PATCH, DELETE): the
	// change is made only while each lock's token is one it gives.
	IfMatch *engine.Precondition
	Reason  string // DELETE with force: why, for the history and the log
}

// decodeLockRequest reads a change to the lock in the path: its name, the
// query and the JSON body.
func decodeLockRequest(w http.ResponseWriter, r *http.Request) (string, lockRequest, error) {
	name, err := lockName(r)
	if err != nil {
		return "", lockRequest{}, err
	}
	req, err := decodeChange(w, r, "/lock/<name>", func(map[string]json.RawMessage) ([]string, error) {
		return []string{name}, nil
	})
	return name, req, err
}

// decodeSetRequest reads a change to several locks (PUT, PATCH, DELETE
// /locks): their names, sorted, from the body's "locks", at most max of
// them, and the rest as decodeLockRequest does.
func decodeSetRequest(w http.ResponseWriter, r *http.Request, max int) ([]string, lockRequest, error) {
	var names []string
	req, err := decodeChange(w, r, "/locks", func(fields map[string]json.RawMessage) ([]string, error) {
		var err error
		names, err = setNames(fields["locks"], max)
		return names, err
	})
	return names, req, err
}

// decodeChange reads the query and the JSON body of a change to the locks
// at path; namesOf reads which locks from the body's fields.
func decodeChange(w http.ResponseWriter, r *http.Request, path string, namesOf func(map[string]json.RawMessage) ([]string, error)) (lockRequest, error) {
	var req lockRequest
	query, err := decodeQuery(r, &req, path)
	if err != nil {
		return req, err
	}
	fields, body, err := jsonbody.Read(w, r, maxBodyBytes, bodyExample, req.Force && path != "/locks")
	if err != nil {
		return req, err
	}
	allowed := bodyFields[r.Method]
	switch path {
	case "/locks":
		allowed = append([]string{"locks"}, allowed...)
	case claimPath:
		allowed = claimFields
	}
	if f, ok := jsonbody.FirstUnknown(fields, allowed); ok {
		return req, fmt.Errorf("%w: unknown field %q in the body; %s %s accepts %s",
			errBadRequest, f, r.Method, path, joinList(quoted(allowed), "and"))
	}
	names, err := namesOf(fields)
	if err != nil {
		return req, err
	}
	if req.Idem, err = idempotencyKey(r, scopeOf(names), body, req.Force); err != nil {
		return req, err
	}
	if req.IfMatch, err = ifMatch(r); err != nil {
		return req, err
	}
	if err := decodeFields(fields, query, &req); err != nil {
		return req, err
	}
	if req.Supersede && req.Wait == 0 {
		return req, fmt.Errorf("%w: \"supersede\" takes the place of your earlier waiting requests, so it is for a request that waits: send it with ?wait=, e.g. ?wait=30m", errBadRequest)
	}
	if req.Reason != "" && !req.Force {
		return req, fmt.Errorf("%w: \"reason\" says why a lock is forced free: send it with ?force=true, e.g. DELETE /lock/<name>?force=true with {\"reason\": \"deploy 41 was aborted\"}", errBadRequest)
	}
	for _, f := range []struct{ name, value string }{{"key", req.Key}, {"lock_by", req.Requestor}, {"note", req.Note}, {"reason", req.Reason}} {
		if len(f.value) > maxFieldBytes {
			return req, fmt.Errorf("%w: %q is %d bytes long; the limit is %d", errBadRequest, f.name, len(f.value), maxFieldBytes)
		}
	}
	for _, f := range []struct{ name, value string }{{`"key"`, req.Key}, {`"lock_by"`, req.Requestor}, {`"reason"`, req.Reason}} {
		if err := printable(f.name, f.value); err != nil {
			return req, err
		}
	}
	if req.TTL > 0 && req.TTL < minTTL {
		return req, fmt.Errorf("%w: ttl is %v; a lease must be at least %v (a shorter one would end before the reply arrives)", errBadRequest, req.TTL, minTTL)
	}
	return req, nil
}

// scopeOf names the locks of a request in its Idempotency-Key's scope:
// one lock by its name, as always; several as a JSON list.
func scopeOf(names []string) string {
	if len(names) == 1 {
		return names[0]
	}
	data, _ := json.Marshal(names) // strings always encode
	return "locks " + string(data)
}

// checkQuery returns r's query parameters, refusing any that r's method
// does not take on path (as the API writes it, e.g. "/lock/<name>"), and
// any given twice. Every method and path is checked alike, so that a
// misspelt or misplaced parameter is never ignored.
func checkQuery(r *http.Request, path string) (url.Values, error) {
	if r.URL.RawQuery == "" {
		return nil, nil
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w: the query is not valid URL encoding (%v)", errBadRequest, err)
	}
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	accepted := queryParams[method+" "+path]
	if p, ok := jsonbody.FirstUnknown(query, accepted.names); ok {
		return nil, fmt.Errorf("%w: unknown query parameter %q; %s %s accepts %s", errBadRequest, p, r.Method, path, cmp.Or(accepted.example, "no query parameters"))
	}
	for _, p := range slices.Sorted(maps.Keys(query)) {
		if len(query[p]) > 1 {
			return nil, fmt.Errorf("%w: query parameter %q is given %d times; give it once", errBadRequest, p, len(query[p]))
		}
	}
	return query, nil
}

// decodeQuery checks r's query parameters and sets req.Force and req.Wait
// from them.
func decodeQuery(r *http.Request, req *lockRequest, path string) (url.Values, error) {
	query, err := checkQuery(r, path)
	if err != nil {
		return nil, err
	}
	if v, ok := query["force"]; ok {
		if req.Force, err = strconv.ParseBool(v[0]); err != nil {
			return nil, fmt.Errorf("%w: force must be true or false, e.g. DELETE /lock/<name>?force=true (got %q)", errBadRequest, v[0])
		}
	}
	if v, ok := query["wait"]; ok {
		if req.Wait, err = jsonbody.ParseDuration("wait", v[0], true); err != nil {
			return nil, err
		}
	}
	return query, nil
}

// decodeFields sets req from the body's fields, which hold only known
// names; query is the request's query, for a wait given in both.
func decodeFields(fields map[string]json.RawMessage, query url.Values, req *lockRequest) error {
	if err := jsonbody.String(fields, "key", bodyExample, &req.Key); err != nil {
		return err
	}
	if req.Key == "" && !req.Force {
		return fmt.Errorf("%w: the body needs a non-empty \"key\" string, e.g. %s", errBadRequest, bodyExample)
	}
	if err := decodeRequestor(fields, req); err != nil {
		return err
	}
	if raw, ok := fields["priority"]; ok {
		if err := json.Unmarshal(raw, &req.Priority); err != nil || string(raw) == "null" || req.Priority < -maxPriority || req.Priority > maxPriority {
			return fmt.Errorf("%w: \"priority\" is a whole number from %d to %d, higher served first (default 0), e.g. {\"key\": \"hotfix\", \"priority\": 10} (got %s)", errBadRequest, -maxPriority, maxPriority, raw)
		}
	}
	if raw, ok := fields["supersede"]; ok {
		if err := json.Unmarshal(raw, &req.Supersede); err != nil || string(raw) == "null" {
			return fmt.Errorf("%w: \"supersede\" must be true or false, e.g. {\"key\": \"deploy\", \"lock_by\": \"deploy-prod\", \"supersede\": true} with ?wait=30m", errBadRequest)
		}
	}
	var err error
	if req.Build, err = lock.DecodeBuild(fields["build"], fields["end_with_build"]); err != nil {
		return fmt.Errorf("%w: %w", errBadRequest, err)
	}
	if raw, ok := fields["all"]; ok {
		if err := json.Unmarshal(raw, &req.All); err != nil {
			return fmt.Errorf("%w: \"all\" must be true or false, e.g. {\"key\": \"prod-cf\", \"all\": true}", errBadRequest)
		}
	}
	if err := jsonbody.String(fields, "note", bodyExample, &req.Note); err != nil {
		return err
	}
	if err := jsonbody.String(fields, "reason", `{"reason": "deploy 41 was aborted"}`, &req.Reason); err != nil {
		return err
	}
	if raw, ok := fields["limit"]; ok {
		if err := json.Unmarshal(raw, &req.Limit); err != nil || req.Limit < 1 {
			return fmt.Errorf("%w: \"limit\" is the most holds the lock may have at once (a semaphore's permits), a whole number from 1 up, e.g. {\"key\": \"staging\", \"limit\": 3} (got %s)", errBadRequest, raw)
		}
	}
	if req.TTL, err = jsonbody.Duration(fields, "ttl", false); err != nil {
		return err
	}
	if _, ok := fields["wait"]; ok {
		wait, err := jsonbody.Duration(fields, "wait", true)
		if err != nil {
			return err
		}
		if _, inQuery := query["wait"]; inQuery && wait != req.Wait {
			return fmt.Errorf("%w: wait is %v in the query but %v in the body; give it once", errBadRequest, req.Wait, wait)
		}
		req.Wait = wait
	}
	return nil
}

// decodeRequestor sets req.Requestor from whichever of requestorFields the
// body has, or to the key when it has none.
func decodeRequestor(fields map[string]json.RawMessage, req *lockRequest) error {
	from := ""
	for _, f := range requestorFields {
		var v string
		if err := jsonbody.String(fields, f, bodyExample, &v); err != nil {
			return err
		}
		if v == "" {
			continue // absent, null or empty: the original treated all three as "use the key"
		}
		if req.Requestor != "" && v != req.Requestor {
			return fmt.Errorf("%w: %q is %q but %q is %q; they name the same thing, send one of them",
				errBadRequest, from, req.Requestor, f, v)
		}
		req.Requestor, from = v, f
	}
	req.Named = req.Requestor != ""
	if !req.Named {
		req.Requestor = req.Key
	}
	return nil
}

// lockName returns the lock name in r's path, unescaped.
func lockName(r *http.Request) (string, error) {
	name, err := url.PathUnescape(mux.Vars(r)["name"])
	switch {
	case err != nil:
		return "", fmt.Errorf("%w: the lock name is not valid URL encoding (%v); write \"/\" as %%2F and \"%%\" as %%25", errBadRequest, err)
	case !utf8.ValidString(name):
		return "", fmt.Errorf("%w: the lock name is not valid UTF-8", errBadRequest)
	case len(name) > maxFieldBytes:
		return "", fmt.Errorf("%w: the lock name is %d bytes long; the limit is %d", errBadRequest, len(name), maxFieldBytes)
	}
	if err := printable("the lock name", name); err != nil {
		return "", err
	}
	return name, nil
}

// printable refuses a name or key with a control character (U+0000 to
// U+001F, U+007F): a tab or a newline in a name cannot be told apart from
// its neighbours in a log, a listing or a shell.
func printable(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8; names and keys are printable text", errBadRequest, what)
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: %s holds the control character %U; names and keys are printable text", errBadRequest, what, c)
		}
	}
	return nil
}

// idempotencyKey reads r's Idempotency-Key header, if any: the key scoped
// to r's method and the lock called name, and a fingerprint of what the
// request asks (method, body and force; not wait, which a client that
// asks again may shorten).
func idempotencyKey(r *http.Request, name string, body []byte, force bool) (*engine.IdempotencyKey, error) {
	values := r.Header.Values("Idempotency-Key")
	switch {
	case len(values) == 0:
		return nil, nil
	case len(values) > 1:
		return nil, fmt.Errorf("%w: the Idempotency-Key header is given %d times; give it once", errBadRequest, len(values))
	}
	key := values[0]
	if key == "" || len(key) > maxIdempotencyKeyBytes {
		return nil, fmt.Errorf("%w: the Idempotency-Key header must be 1 to %d bytes, e.g. a UUID", errBadRequest, maxIdempotencyKeyBytes)
	}
	if err := printable("the Idempotency-Key header", key); err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%t\n", r.Method, force)
	h.Write(bytes.TrimSpace(body))
	if conditions := r.Header.Values("If-Match"); len(conditions) > 0 {
		fmt.Fprintf(h, "\nIf-Match: %q", conditions) // another condition is another request
	}
	return &engine.IdempotencyKey{
		Scope:       r.Method + " " + name + " " + key,
		Fingerprint: hex.EncodeToString(h.Sum(nil)),
	}, nil
}

// joinList formats items as "a, b and c" (conj "and") or "a, b or c".
func joinList(items []string, conj string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " " + conj + " " + items[len(items)-1]
}

// quoted returns each of names in double quotes.
func quoted(names []string) []string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return q
}

// decodePage reads GET /locks's query: which page of the listing it asks
// for (Limit 0: all of it).
func decodePage(r *http.Request) (txn.Page, error) {
	query, err := checkQuery(r, "/locks")
	if err != nil {
		return txn.Page{}, err
	}
	page := txn.Page{Prefix: query.Get("prefix"), After: query.Get("after")}
	for _, p := range []struct{ name, value string }{{"prefix", page.Prefix}, {"after", page.After}} {
		if len(p.value) > maxFieldBytes {
			return txn.Page{}, fmt.Errorf("%w: ?%s= is %d bytes long; the limit is %d, as for a lock name", errBadRequest, p.name, len(p.value), maxFieldBytes)
		}
		if err := printable("?"+p.name+"=", p.value); err != nil {
			return txn.Page{}, err
		}
	}
	if v, ok := query["limit"]; ok {
		n, err := strconv.Atoi(v[0])
		if err != nil || n < 1 || n > maxPage {
			return txn.Page{}, fmt.Errorf("%w: ?limit=%q is not a number of locks from 1 to %d; e.g. ?limit=500, then ?after=<the last name> for the next page (the Link header has its URL)", errBadRequest, v[0], maxPage)
		}
		page.Limit = n
	}
	return page, nil
}

// nextPageLink is the Link header that points at the page after the one
// that ends with the lock called last.
func nextPageLink(page txn.Page, last string) string {
	q := url.Values{"limit": {strconv.Itoa(page.Limit)}, "after": {last}}
	if page.Prefix != "" {
		q.Set("prefix", page.Prefix)
	}
	return "</locks?" + q.Encode() + `>; rel="next"`
}
