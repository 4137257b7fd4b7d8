package resource

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// RunCheck is the check command: it reads a CheckRequest on stdin and writes
// the versions on stdout. It returns the exit code.
func RunCheck(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	var req CheckRequest
	if err := decodeRequest(stdin, &req); err != nil {
		return fail(stderr, err)
	}
	versions, err := Check(ctx, req, stderr)
	if err != nil {
		return fail(stderr, err)
	}
	return answer(stdout, stderr, versions)
}

// RunIn is the in command: args[0] is the destination directory.
func RunIn(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	var req InRequest
	if err := decodeRequest(stdin, &req); err != nil {
		return fail(stderr, err)
	}
	dest := ""
	if len(args) > 0 {
		dest = args[0]
	}
	resp, err := In(ctx, req, dest, stderr)
	if err != nil {
		return fail(stderr, err)
	}
	return answer(stdout, stderr, resp)
}

// RunOut is the out command: it takes or gives back the lock.
func RunOut(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	var req OutRequest
	if err := decodeRequest(stdin, &req); err != nil {
		return fail(stderr, err)
	}
	resp, err := Out(ctx, req, getenv, stderr)
	if err != nil {
		return fail(stderr, err)
	}
	return answer(stdout, stderr, resp)
}

// decodeRequest reads Concourse's JSON request. Unknown fields are errors,
// so that a misspelt source or param is not silently ignored.
func decodeRequest(stdin io.Reader, v any) error {
	dec := json.NewDecoder(stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("the request on stdin is not valid: %w (check the resource's source and params in the pipeline)", err)
	}
	return nil
}

func answer(stdout, stderr io.Writer, v any) int {
	if err := json.NewEncoder(stdout).Encode(v); err != nil {
		return fail(stderr, fmt.Errorf("writing the answer: %w", err))
	}
	return 0
}

func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "error: %v\n", err)
	return 1
}

// Command is the shape of RunCheck, RunIn and RunOut.
type Command func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int

// Main runs cmd as the process: with its arguments, standard streams and
// environment, and exits with cmd's code. An aborted build is stopped with
// a signal; it cancels cmd's context, which ends the request, so that the
// server takes a waiting lock request out of its queue.
func Main(cmd Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmd(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
