package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/locker-ci/locker/client"
)

// Three test jobs share the staging environment with one key; the upgrade
// job, with another, is refused while they hold it.
func Example() {
	c, err := client.New(client.Config{
		URL:      os.Getenv("LOCKER_URL"), // e.g. https://locker.example.com:8910
		User:     os.Getenv("LOCKER_USER"),
		Password: os.Getenv("LOCKER_PASSWORD"),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for _, job := range []string{"unit", "integration", "smoke"} {
		if _, err := c.Lock(ctx, "staging", client.Request{Key: "tests", Requestor: job}, client.Options{}); err != nil {
			log.Fatal(err)
		}
	}
	_, err = c.Lock(ctx, "staging", client.Request{Key: "upgrade", Requestor: "upgrade"}, client.Options{})
	fmt.Println("upgrade refused:", client.IsStatus(err, http.StatusLocked))
	fmt.Println(err)

	for _, job := range []string{"unit", "integration", "smoke"} {
		if _, err := c.Unlock(ctx, "staging", client.Request{Key: "tests", Requestor: job}, client.Options{}); err != nil {
			log.Fatal(err)
		}
	}
	l, err := c.Lock(ctx, "staging", client.Request{Key: "upgrade", Requestor: "upgrade"}, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("now held by", l.LockedBy)
	// Output:
	// upgrade refused: true
	// "staging" is held with key "tests" by integration (1), smoke (1), unit (1); set Options.Wait to wait for it
	// now held by map[upgrade:1]
}

// Deploys of different versions exclude each other (their keys differ):
// a deploy waits for the one before it to finish, then takes prod with a
// lease that frees it if the deploy vanishes.
func ExampleClient_Lock() {
	c, err := client.New(client.Config{URL: os.Getenv("LOCKER_URL"), User: os.Getenv("LOCKER_USER"), Password: os.Getenv("LOCKER_PASSWORD")})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	first := client.Request{Key: "v41", Requestor: "deploy-41", TTL: "30m"}
	if _, err := c.Lock(ctx, "prod", first, client.Options{}); err != nil {
		log.Fatal(err)
	}
	go func() { // deploy 41 finishes a moment later
		time.Sleep(200 * time.Millisecond)
		if _, err := c.Unlock(ctx, "prod", first, client.Options{}); err != nil {
			log.Fatal(err)
		}
	}()

	next := client.Request{Key: "v42", Requestor: "deploy-42", TTL: "30m", Note: "https://ci.example.com/builds/42"}
	l, err := c.Lock(ctx, "prod", next, client.Options{
		Wait:     true,
		Deadline: time.Now().Add(time.Minute),
	})
	var timedOut *client.TimedOut
	if errors.As(err, &timedOut) {
		log.Fatalf("gave up waiting for prod: %v", timedOut.Last) // says who held it
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println("prod is held by", l.LockedBy)
	fmt.Println("lease of about 30m:", time.Until(l.Holders["deploy-42"].ExpiresAt).Round(time.Minute))
	// Output:
	// prod is held by map[deploy-42:1]
	// lease of about 30m: 30m0s
}

// A long job renews its lease while it runs; the server frees the lock
// if the renewals stop.
func ExampleClient_Renew() {
	c, err := client.New(client.Config{URL: os.Getenv("LOCKER_URL"), User: os.Getenv("LOCKER_USER"), Password: os.Getenv("LOCKER_PASSWORD")})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	r := client.Request{Key: "nightly", Requestor: "nightly-build", TTL: "1m"}
	if _, err := c.Lock(ctx, "build-cache", r, client.Options{}); err != nil {
		log.Fatal(err)
	}
	r.TTL = "10m"
	l, err := c.Renew(ctx, "build-cache", r, client.Options{Deadline: time.Now().Add(time.Minute)})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("lease left:", time.Until(l.Holders["nightly-build"].ExpiresAt).Round(time.Minute))
	// Output:
	// lease left: 10m0s
}

// A job that needs the database and the web tier takes both in one
// change, or neither.
func ExampleClient_LockSet() {
	c, err := client.New(client.Config{URL: os.Getenv("LOCKER_URL"), User: os.Getenv("LOCKER_USER"), Password: os.Getenv("LOCKER_PASSWORD")})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	r := client.Request{Key: "migrate", Requestor: "migration"}
	locks, err := c.LockSet(ctx, []string{"db", "web"}, r, client.Options{Wait: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(locks["db"].Key, locks["web"].Key)
	_, released, err := c.UnlockSet(ctx, []string{"db", "web"}, r, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("gave back", released)
	// Output:
	// migrate migrate
	// gave back map[db:1 web:1]
}

// Test environments as a pool: each job claims whichever one is free.
func ExampleClient_Claim() {
	c, err := client.New(client.Config{URL: os.Getenv("LOCKER_URL"), User: os.Getenv("LOCKER_USER"), Password: os.Getenv("LOCKER_PASSWORD")})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.SetPool(ctx, "envs", []string{"env-1", "env-2"}); err != nil {
		log.Fatal(err)
	}
	for _, job := range []string{"job-a", "job-b"} {
		got, err := c.Claim(ctx, "envs", 1, client.Request{Key: job, Requestor: job}, client.Options{Wait: true})
		if err != nil {
			log.Fatal(err)
		}
		for member := range got {
			fmt.Println(job, "claimed", member)
		}
	}
	_, err = c.Claim(ctx, "envs", 1, client.Request{Key: "job-c", Requestor: "job-c"}, client.Options{})
	fmt.Println("job-c refused:", client.IsStatus(err, http.StatusLocked))
	// Output:
	// job-a claimed env-1
	// job-b claimed env-2
	// job-c refused: true
}

// Who held the lock, newest first.
func ExampleClient_History() {
	c, err := client.New(client.Config{URL: os.Getenv("LOCKER_URL"), User: os.Getenv("LOCKER_USER"), Password: os.Getenv("LOCKER_PASSWORD")})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	r := client.Request{Key: "release", Requestor: "release-job"}
	if _, err := c.Lock(ctx, "artifacts", r, client.Options{}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Unlock(ctx, "artifacts", r, client.Options{}); err != nil {
		log.Fatal(err)
	}
	h, err := c.History(ctx, "artifacts", 0, 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range h.Events {
		fmt.Println(e.Kind, e.Holder, e.Key)
	}
	// Output:
	// released release-job release
	// taken release-job release
}

// Follow the changes to a lock, from after an event seen before: a
// program that follows again with the ID Follow returned misses none.
func ExampleClient_Follow() {
	c, err := client.New(client.Config{URL: os.Getenv("LOCKER_URL"), User: os.Getenv("LOCKER_USER"), Password: os.Getenv("LOCKER_PASSWORD")})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	a := client.Request{Key: "a", Requestor: "job-a"}
	if _, err := c.Lock(ctx, "canary", a, client.Options{}); err != nil {
		log.Fatal(err)
	}
	h, err := c.History(ctx, "canary", 0, 1)
	if err != nil {
		log.Fatal(err)
	}
	seen := h.Events[0].ID // job-a took it

	if _, err := c.Unlock(ctx, "canary", a, client.Options{}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Lock(ctx, "canary", client.Request{Key: "b", Requestor: "job-b"}, client.Options{}); err != nil {
		log.Fatal(err)
	}

	n := 0
	_, err = c.Follow(ctx, client.Filter{Lock: "canary"}, seen, func(e client.Event) {
		fmt.Println(e.Kind, e.Holder)
		if n++; n == 2 {
			stop()
		}
	}, nil)
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
	// Output:
	// released job-a
	// taken job-b
}
