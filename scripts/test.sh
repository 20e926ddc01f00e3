#!/usr/bin/env bash
# The default test run: system tools the tests drive for real, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Prometheus (promtool + a real server for the scrape test and the rule lints). Without it
# the run fails: those tests must run (tests/loadtest/test_promcheck.py fails, not skips).
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing prometheus (Debian package) for the real-scrape and promtool tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) || true
  fi
  if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    echo "test: prometheus/promtool are missing and could not be installed (needs root and apt-get):" \
         "install Debian's prometheus package; the real-scrape and rule tests cannot run without it" >&2
    exit 1
  fi
fi
# Podman (+ buildah, runc) builds and runs the serving image in the container smoke test
# (tests/test_container.py), from a base image debootstrapped from the apt mirror
# (docker/make-local-base.sh: no registry needed). Without them the run fails.
if ! command -v podman >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing podman, buildah, runc, debootstrap (Debian packages) for the container smoke test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap \
      >/dev/null) || true
  fi
  if ! command -v podman >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    echo "test: podman/debootstrap are missing and could not be installed (needs root and apt-get):" \
         "install Debian's podman, buildah, runc and debootstrap; the container smoke test cannot run without them" >&2
    exit 1
  fi
fi
# Debian's Chromium for the playground's browser test (Playwright drives it; Playwright's own
# browser download is not reachable here). Without it the run fails: that test must run.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing chromium (Debian package) for the playground's browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || true
  fi
  if [ ! -x /usr/bin/chromium ]; then
    echo "test: /usr/bin/chromium is missing and could not be installed (needs root and apt-get):" \
         "install Debian's chromium package; the browser test cannot run without it" >&2
    exit 1
  fi
fi
start=$(date +%s)
set +e
.venv/bin/python -m pytest -q --timeout=900 "$@"
rc=$?
set -e
echo "test: suite took $(( $(date +%s) - start )) s"
exit $rc
