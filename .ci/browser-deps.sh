#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/browser/), idempotently.
#
# The tests drive headless Chromium through Playwright's Python package, which
# bundles its driver but not a browser; we never run `playwright install` (it
# downloads from a CDN). Debian's package is what CI uses. Skips all work when
# the browser is already there. Needs root (or sudo) for apt-get.
set -euo pipefail

CHROMIUM="${MAMBA_NB_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    echo "browser-deps: $CHROMIUM already installed, nothing to do"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null; then
    SUDO="sudo"
else
    echo "browser-deps: need root or sudo to run apt-get install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "browser-deps: no apt-get here; install Chromium yourself and set MAMBA_NB_CHROMIUM=/path/to/chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
"$CHROMIUM" --version
