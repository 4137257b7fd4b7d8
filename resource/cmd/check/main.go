// Command check is the Concourse resource's check step for the locker server;
// Concourse runs it as /opt/resource/check.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/locker-ci/locker/resource"
)

func main() {
	// An aborted build is stopped with a signal: end the request, so that
	// the server takes a waiting lock request out of its queue.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := resource.RunCheck(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
