package resource

import (
	"context"
	"io"
)

// Check returns the lock's current version. Concourse adds it to the
// resource's history when it differs from the last one it saw.
func Check(ctx context.Context, req CheckRequest, stderr io.Writer) ([]Version, error) {
	if err := req.Source.Validate(); err != nil {
		return nil, err
	}
	if req.Source.Pool != "" {
		v, _, err := getPool(ctx, req.Source)
		if err != nil {
			return nil, err
		}
		return []Version{v}, nil
	}
	l, _, err := getLock(ctx, req.Source)
	if err != nil {
		return nil, err
	}
	return []Version{version(l.Lock)}, nil
}
