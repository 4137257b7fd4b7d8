#!/bin/sh
# install-test-packages.sh installs, with apt-get, the Debian packages some
# tests need when they are missing: chromium (the status page's browser
# test), ruby (the BOSH job's ERB templates), zsh and fish (the command
# line's completion scripts). `make test` runs it.
# It needs apt-get and root (or sudo without a password); without them it
# says so and those tests are skipped, unless CI is set.
set -eu

missing=""
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 && ! command -v google-chrome >/dev/null 2>&1; then
	missing=" chromium"
fi
if ! command -v ruby >/dev/null 2>&1; then
	missing="$missing ruby"
fi
for shell in zsh fish; do # locker completion's scripts
	if ! command -v $shell >/dev/null 2>&1; then
		missing="$missing $shell"
	fi
done
if [ -z "$missing" ]; then
	exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "install-test-packages: missing$missing, and not root: run 'sudo apt-get install$missing' to run the tests that need them" >&2
		exit 0
	fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-test-packages: missing$missing, and no apt-get: install them to run the tests that need them" >&2
	exit 0
fi

echo "install-test-packages: installing$missing with apt-get (about 20 s)" >&2
$sudo apt-get update -qq
# shellcheck disable=SC2086 # one word a package
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
