// Package client is the Go client of Locker, the HTTP lock server for CI
// pipelines: take a lock, wait for it, renew its lease, give it back;
// take several at once or claim members of a pool; read a lock's history
// and follow the stream of changes. The locker command line and the
// Concourse resource are built on it.
//
// A program that deploys to prod while no other deploy does:
//
//	package main
//
//	import (
//		"context"
//		"fmt"
//		"log"
//		"os"
//		"time"
//
//		"github.com/locker-ci/locker/client"
//	)
//
//	func main() {
//		c, err := client.New(client.Config{
//			URL:      "https://locker.example.com:8910",
//			User:     "ci",
//			Password: os.Getenv("LOCKER_PASSWORD"),
//		})
//		if err != nil {
//			log.Fatal(err)
//		}
//		ctx := context.Background()
//		deploy := client.Request{
//			Key:       "deploy",     // holders with one key share the lock
//			Requestor: "deploy-job", // who holds it, as GET /locks shows
//			TTL:       "30m",        // freed by the server if we vanish
//			Note:      "https://ci.example.com/builds/42",
//		}
//		// Wait in the queue for up to an hour, retrying while the server
//		// cannot be reached.
//		prod, err := c.Lock(ctx, "prod", deploy, client.Options{
//			Wait:     true,
//			Deadline: time.Now().Add(time.Hour),
//			Progress: func(msg string) { log.Print(msg) }, // who holds it, while we wait
//		})
//		if err != nil {
//			log.Fatal(err) // a *client.TimedOut says who held it
//		}
//		fmt.Println("deploying with fencing token", prod.Token)
//		// ... deploy ...
//		if _, err := c.Unlock(ctx, "prod", deploy, client.Options{Deadline: time.Now().Add(time.Minute)}); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// # Retries
//
// Every change carries an Idempotency-Key, the same on each try, so a
// change whose answer was lost is sent again without being made twice.
// A call retries when the server cannot be reached or answers 5xx,
// waiting 1 s, doubling up to 30 s, until Options.Deadline (zero: until
// ctx is done). A refusal (423 Locked) or a bad request (4xx) is not
// retried: it is an *Error, whose Status says which. One 409 is: a take
// (Lock, LockSet, Claim) sent again after its answer was lost, whose
// grant has since ended (its lease ran out meanwhile), is asked for
// again with a new Idempotency-Key, within the same deadline, unless
// Request.IdempotencyKey was the caller's own.
//
// # What may change
//
// Locker follows semantic versioning from v1.0.0 on, and this package
// with it: within a major version, no exported name is removed or changes
// its type or meaning. These may change:
//
//   - structs (Config, Request, Options, Lock, Event, ...) gain fields, so
//     write their literals with field names;
//   - a later server sends event kinds (EventKind) not listed here;
//   - messages (Error.Message, the text of any error, Progress's words)
//     are for people and may be reworded: compare Error.Status, or use
//     IsStatus, errors.As and Retryable, not the text;
//   - the backoff between retries and RequestTimeout may be tuned.
//
// Before v1.0.0, anything here may change between releases; the release
// notes say what did.
package client
