#!/usr/bin/env bash
# The default test run: system tools the tests drive for real, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# System tools the tests drive for real; each one missing fails the run (never a skip):
# - prometheus + promtool: the real-scrape test and the rule lints (tests/loadtest/test_promcheck.py)
# - podman, buildah, runc, debootstrap: the container smoke test (tests/test_container.py) builds
#   the serving image from a base debootstrapped from the apt mirror (docker/make-local-base.sh)
# - chromium: the playground's browser test (Playwright drives Debian's Chromium; Playwright's
#   own browser download is not reachable here)
# One apt-get run installs whatever is missing.
need=()
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
{ command -v podman && command -v debootstrap; } >/dev/null 2>&1 || need+=(podman buildah runc debootstrap)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing ${need[*]} (Debian packages) for the tests that drive them"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) || true
  fi
  missing=()
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=("prometheus/promtool (the real-scrape and rule tests)")
  { command -v podman && command -v debootstrap; } >/dev/null 2>&1 || missing+=("podman/debootstrap (the container smoke test)")
  [ -x /usr/bin/chromium ] || missing+=("/usr/bin/chromium (the playground's browser test)")
  if [ ${#missing[@]} -gt 0 ]; then
    printf 'test: missing and could not be installed (needs root and apt-get): %s\n' "${missing[@]}" >&2
    exit 1
  fi
fi
start=$(date +%s)
# The whole suite (no arguments): build the serving image in the background while the first
# tests run, so tests/test_container.py's own build (docker/smoke.sh, the same arguments) is a
# layer-cache hit. On a fresh machine the base image and the cold build take ~2.5 min of
# mostly download and compile; started here they overlap the fixture builds instead of
# adding to the run. The test still builds and checks the image itself: if this fails, its
# build repeats the work and reports the error. Log: runs/container-prewarm.log.
prewarm=""
if [ $# -eq 0 ]; then
  mkdir -p runs
  # niced: the tests keep the CPU they need; the image build takes what is left
  (BASE_TAG=localhost/hlm-base:bookworm nice -n 10 docker/make-local-base.sh \
     && BUILD_ONLY=1 BASE_IMAGE=localhost/hlm-base:bookworm nice -n 10 docker/smoke.sh) \
    > runs/container-prewarm.log 2>&1 &
  prewarm=$!
fi
set +e
.venv/bin/python -m pytest -q --timeout=900 "$@"
rc=$?
set -e
if [ -n "$prewarm" ] && kill -0 "$prewarm" 2>/dev/null; then kill "$prewarm" 2>/dev/null || true; fi
echo "test: suite took $(( $(date +%s) - start )) s"
exit $rc
