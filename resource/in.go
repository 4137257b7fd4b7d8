package resource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/locker-ci/locker/client"
)

// In writes the lock as it is now into dest: "lock" (its JSON, as GET
// /lock/<name> shows it), "name", and "token", the fencing token of the
// version it was asked for. It answers with that version, so that a get
// after a put sees the put's version. For a pool, the lock is the member
// the version names (a claim's), also written as "metadata", as the
// pool-resource writes it; a version that names none writes the pool's
// JSON as "pool", and an empty "name".
func In(ctx context.Context, req InRequest, dest string, stderr io.Writer) (Response, error) {
	if dest == "" {
		return Response{}, errors.New("in needs the destination directory as its argument: in <destination>")
	}
	if err := req.Source.Validate(); err != nil {
		return Response{}, err
	}
	if req.Source.Pool != "" && (req.Version == nil || req.Version.Lock == "") {
		return inPool(ctx, req, dest)
	}
	var l client.Reply
	var name string
	var err error
	if req.Version != nil && req.Version.Lock != "" {
		name = req.Version.Lock
		c, cerr := newClient(req.Source)
		if cerr != nil {
			return Response{}, cerr
		}
		l, err = c.Get(ctx, name)
	} else {
		l, name, err = getLock(ctx, req.Source)
	}
	if err != nil {
		return Response{}, err
	}
	// dest is the directory Concourse names on the command line: writing
	// there is the in step's job.
	if err := os.MkdirAll(dest, 0o750); err != nil { // see above
		return Response{}, fmt.Errorf("creating the destination: %w", err)
	}
	// The token is the version's: after a lease ran out and another job
	// took the lock, the job that held this version must not be handed the
	// new holder's fencing token.
	token := strconv.FormatUint(l.Token, 10)
	if req.Version != nil && req.Version.Ref != "" {
		t, ok := req.Version.token()
		if !ok {
			return Response{}, fmt.Errorf("version %q is not one this resource made (<token>:<digest>): run check again", req.Version.Ref)
		}
		token = strconv.FormatUint(t, 10)
	}
	files := map[string][]byte{"lock": l.Raw, "name": []byte(name), "token": []byte(token)}
	if req.Source.Pool != "" {
		files["metadata"] = l.Raw
	}
	for file, data := range files {
		// Readable by the job's tasks, which may run as another user, as the
		// original resource's files were.
		if err := os.WriteFile(filepath.Join(dest, file), data, 0o644); err != nil { // see above
			return Response{}, fmt.Errorf("writing %s: %w", file, err)
		}
	}
	v := version(l.Lock)
	if req.Version != nil && req.Version.Ref != "" {
		v = *req.Version
	}
	fmt.Fprintf(stderr, "%q: key %q, held by %s\n", name, l.Key, cmp.Or(l.HoldersString(), "no one"))
	return Response{Version: v, Metadata: []MetadataField{
		{Name: "lock_name", Value: name},
		{Name: "locked", Value: strconv.FormatBool(len(l.LockedBy) > 0)},
		{Name: "key", Value: l.Key},
	}}, nil
}

// inPool writes the source's pool into dest: "pool", its JSON, and an
// empty "name" (no member was claimed for this version).
func inPool(ctx context.Context, req InRequest, dest string) (Response, error) {
	v, raw, err := getPool(ctx, req.Source)
	if err != nil {
		return Response{}, err
	}
	if req.Version != nil && req.Version.Ref != "" {
		v = *req.Version
	}
	if err := os.MkdirAll(dest, 0o750); err != nil { // the destination Concourse names
		return Response{}, fmt.Errorf("creating the destination: %w", err)
	}
	for file, data := range map[string][]byte{"pool": raw, "name": nil} {
		if err := os.WriteFile(filepath.Join(dest, file), data, 0o644); err != nil { // readable by the job's tasks
			return Response{}, fmt.Errorf("writing %s: %w", file, err)
		}
	}
	return Response{Version: v, Metadata: []MetadataField{{Name: "pool", Value: req.Source.Pool}}}, nil
}
