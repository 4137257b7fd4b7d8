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
)

// In writes the lock as it is now into dest: "lock" (its JSON, as GET
// /lock/<name> shows it), "name", and "token", the fencing token of the
// version it was asked for. It answers with that version, so that a get
// after a put sees the put's version.
func In(ctx context.Context, req InRequest, dest string, stderr io.Writer) (Response, error) {
	if dest == "" {
		return Response{}, errors.New("in needs the destination directory as its argument: in <destination>")
	}
	if err := req.Source.Validate(); err != nil {
		return Response{}, err
	}
	l, name, err := getLock(ctx, req.Source)
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
	for file, data := range map[string][]byte{"lock": l.Raw, "name": []byte(name), "token": []byte(token)} {
		// Readable by the job's tasks, which may run as another user, as the
		// original resource's files were.
		if err := os.WriteFile(filepath.Join(dest, file), data, 0o644); err != nil { // see above
			return Response{}, fmt.Errorf("writing %s: %w", file, err)
		}
	}
	v := version(l)
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
