#!/bin/sh
# install-chromium.sh installs Debian's chromium, which the status page's
# browser test drives, when no Chromium is on the PATH. `make test` runs it.
# It needs apt-get and root (or sudo without a password); without them it
# says so and the browser test is skipped, unless CI is set.
set -eu

for browser in chromium chromium-browser google-chrome; do
	if command -v "$browser" >/dev/null 2>&1; then
		exit 0
	fi
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "install-chromium: no chromium, and not root: run 'sudo apt-get install chromium' to run the browser test" >&2
		exit 0
	fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-chromium: no chromium and no apt-get: install Chromium to run the browser test" >&2
	exit 0
fi

echo "install-chromium: installing Debian's chromium for the browser test (about 15 s)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium
