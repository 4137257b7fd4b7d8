package resource

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"syscall"

	"github.com/locker-ci/locker/internal/nearest"
)

// RunCheck is the check command: it reads a CheckRequest on stdin and writes
// the versions on stdout. It returns the exit code.
func RunCheck(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	var req CheckRequest
	if err := decodeRequest(stdin, map[string]any{"source": &req.Source, "version": &req.Version}); err != nil {
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
	if err := decodeRequest(stdin, map[string]any{"source": &req.Source, "version": &req.Version, "params": &req.Params}); err != nil {
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
	if err := decodeRequest(stdin, map[string]any{"source": &req.Source, "params": &req.Params}); err != nil {
		return fail(stderr, err)
	}
	dir := ""
	if len(args) > 0 {
		dir = args[0] // the build's directory, which Concourse names
	}
	resp, err := Out(ctx, req, dir, getenv, stderr)
	if err != nil {
		return fail(stderr, err)
	}
	return answer(stdout, stderr, resp)
}

// decodeRequest reads Concourse's JSON request into parts, one pointer per
// top-level field. Unknown fields are errors that say where they are, all
// of them at once, so that a misspelt source field or param is not
// silently ignored.
func decodeRequest(stdin io.Reader, parts map[string]any) error {
	var top map[string]json.RawMessage
	if err := json.NewDecoder(stdin).Decode(&top); err != nil {
		return fmt.Errorf("the request on stdin is not valid JSON: %w", err)
	}
	var problems []string
	for _, field := range slices.Sorted(maps.Keys(top)) {
		dst, ok := parts[field]
		if !ok {
			problems = append(problems, fmt.Sprintf("the request has an unknown top-level field %q (this resource reads %s)", field, strings.Join(slices.Sorted(maps.Keys(parts)), ", ")))
			continue
		}
		if err := json.Unmarshal(top[field], dst); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v (check the resource's %s in the pipeline)", field, err, field))
			continue
		}
		problems = append(problems, unknownFields(field, top[field], dst)...)
	}
	return joinProblems(problems)
}

// unknownFields names each field of the JSON object data that the struct
// dst points to has no field for, with the one likely meant.
func unknownFields(where string, data json.RawMessage, dst any) []string {
	t := reflect.TypeOf(dst).Elem()
	var given map[string]json.RawMessage
	if t.Kind() != reflect.Struct || json.Unmarshal(data, &given) != nil {
		return nil
	}
	var known []string
	for f := range t.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
			known = append(known, name)
		}
	}
	var problems []string
	for _, name := range slices.Sorted(maps.Keys(given)) {
		if slices.ContainsFunc(known, func(k string) bool { return strings.EqualFold(k, name) }) { // as encoding/json matches them
			continue
		}
		msg := fmt.Sprintf("%s.%s is not a field of the resource's %s", where, name, where)
		if near, ok := nearest.Word(name, known); ok {
			msg += fmt.Sprintf("; did you mean %s.%s?", where, near)
		}
		problems = append(problems, msg)
	}
	return problems
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
