# Locker's entry points. Each target says what it does in one line.

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# STATE is the state file `make run` uses unless LOCKER_CONFIG is set.
STATE ?= locker-state.yml
# The linter, pinned, installed into bin/tools by `make lint` the first
# time (about 40 s here). gosec was dropped: it took 3.5 minutes and 48
# modules to install, and all it ever found here were paths taken from
# the operator's configuration.
TOOLS := $(CURDIR)/bin/tools
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: build run test fuzz test-packages stress calibrate lint resource dist bench clean

# build: compile the server to ./locker.
build:
	go build -ldflags "$(LDFLAGS)" -o locker .

# run: build and serve on PORT (default 3000), keeping locks in $(STATE).
run: build
	LOCKER_CONFIG="$${LOCKER_CONFIG:-$(STATE)}" exec ./locker

# How many parallel tests of a package run at once. The black-box tests
# mostly wait (on kills, restarts, their clients), so four of them share
# the two cores here well; the default, one per core, left cores idle.
TEST_PARALLEL ?= 4

# How many inputs `make fuzz` gives each fuzz target (at most 20 s each
# here; make stress gives thirty times as many). Counts, not durations:
# with a duration, go1.26's fuzzing can end in a spurious "context
# deadline exceeded" (go.dev/issue/75804, fixed in 1.27).
FUZZ_API ?= 4000x
FUZZ_STATE ?= 200000x
FUZZ_JOURNAL ?= 200000x

# test: lint, every test under the race detector (the black-box tests in
# blackbox/, the status page's browser test, the BOSH release's and the
# PostgreSQL store's too; each fuzz target's seed corpus). CI runs this.
test: lint test-packages
	@bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null || [ -n "$$LOCKER_TEST_DATABASE_URL" ] || \
		echo "make test: no PostgreSQL on 127.0.0.1:5432 and LOCKER_TEST_DATABASE_URL unset: the PostgreSQL store's tests are skipped (set LOCKER_TEST_DATABASE_URL=postgres://... to run them)"
	LOCKER_TEST_RESTART_POSTGRES= go test -race -count=1 -parallel $(TEST_PARALLEL) ./...
	@if [ -n "$$LOCKER_TEST_RESTART_POSTGRES" ]; then echo "restarting PostgreSQL for TestTokensAcrossADatabaseRestart"; \
		out=$$(go test -race -count=1 -v -run '^TestTokensAcrossADatabaseRestart$$' ./internal/engine 2>&1); status=$$?; echo "$$out"; \
		[ $$status -eq 0 ] && echo "$$out" | grep -q -- '--- PASS: TestTokensAcrossADatabaseRestart' || \
		{ echo "TestTokensAcrossADatabaseRestart did not pass (or did not run)"; exit 1; }; fi

# fuzz: each fuzz target, a few hundred thousand inputs (a minute here;
# building the fuzzing binaries takes another minute with empty caches,
# which is why make test runs only their seed corpora).
fuzz:
	go test -run '^$$' -fuzz '^FuzzAPI$$' -fuzztime $(FUZZ_API) .
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZ_STATE) ./internal/statefile
	go test -run '^$$' -fuzz '^FuzzReadLines$$' -fuzztime $(FUZZ_JOURNAL) ./internal/journal

# stress: the long runs: 2,000 crash cycles, 10,000 waiters, minute-long linearizability
# and torture runs, 50 clients taking sets for 30 s on each store, the release archives of
# every platform, thirty times the fuzzing.
stress:
	LOCKER_STRESS=1 go test -race -count=1 -timeout 3h -run 'TestCrashKill|TestLinearizable|TestThousandsOfWaiters|TestTortureNodes' -v ./blackbox
	LOCKER_STRESS=1 go test -race -count=1 -run '^TestSetsInOppositeOrders$$' -v ./internal/engine
	LOCKER_STRESS=1 go test -race -count=1 -v ./scripts/dist
	$(MAKE) test
	$(MAKE) fuzz FUZZ_API=120000x FUZZ_STATE=6000000x FUZZ_JOURNAL=6000000x

# calibrate: prove that TestLinearizable and TestLinearizableNodes catch each
# planted bug (about 40 minutes).
calibrate:
	scripts/calibrate.sh

# test-packages: install Debian's chromium (the browser test), ruby (the
# BOSH templates), zsh and fish (completion) if missing; needs root or sudo,
# else those tests are skipped.
test-packages:
	@scripts/install-test-packages.sh

# lint: gofmt, go vet and staticcheck must have nothing to say, and go.mod
# and go.sum must be tidy.
lint: $(TOOLS)/staticcheck
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "gofmt -w needed on: $$unformatted"; exit 1; fi
	@go mod tidy -diff || { echo "go.mod or go.sum is not tidy (the diff above): run go mod tidy"; exit 1; }
	go vet ./...
	$(TOOLS)/staticcheck ./...

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) go install $(STATICCHECK)

# dist: the release archives of VERSION (git describe) and their SHA256SUMS
# in dist/: the server for linux and darwin on amd64 and arm64, the
# resource for linux; the same commit gives the same bytes.
dist:
	rm -rf dist
	go run ./scripts/dist -version $(VERSION) -out dist

# resource: build the Concourse resource's check, in and out into bin/resource.
resource:
	for cmd in check in out; do CGO_ENABLED=0 go build -trimpath -o bin/resource/$$cmd ./resource/cmd/$$cmd || exit 1; done

# bench: measure the server on this machine (a few minutes); prints a table
# and writes it to bin/bench-results.json. BENCHFLAGS=-runs 5 for more runs;
# BENCHFLAGS="-json bench/results.json" to update the figures in the repository.
bench: build
	go build -o bin/locker-bench ./bench
	bin/locker-bench -locker ./locker $(BENCHFLAGS)

# clean: remove what build, run, resource and bench made, and run's state
# (state file, journal and lock file together, so that the next run starts
# empty). The linters in bin/tools stay.
clean:
	rm -rf locker bin/resource bin/locker-bench bin/bench-results.json $(STATE) $(STATE).journal $(STATE).lock
