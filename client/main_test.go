package client_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/locker-ci/locker/internal/testutil"
)

// lockerBin is the locker server TestMain builds.
var lockerBin string

// TestMain builds the locker server and starts one, with basic auth, for
// the examples: they find it as a program would, in LOCKER_URL,
// LOCKER_USER and LOCKER_PASSWORD.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "locker-client")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	lockerBin = filepath.Join(dir, "locker")
	if out, err := testutil.GoBuild(lockerBin, "github.com/locker-ci/locker"); err != nil {
		fmt.Fprintf(os.Stderr, "building locker: %v\n%s", err, out)
		return 1
	}
	s, err := testutil.Start(lockerBin, "LOCKER_CONFIG="+filepath.Join(dir, "locks.yml"), "AUTH_USER=ci", "AUTH_PASS=s3cret")
	if s != nil {
		defer s.Kill()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for k, v := range map[string]string{"LOCKER_URL": s.URL, "LOCKER_USER": "ci", "LOCKER_PASSWORD": "s3cret"} {
		if err := os.Setenv(k, v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}
