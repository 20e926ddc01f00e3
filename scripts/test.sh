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
set +e
.venv/bin/python -m pytest -q --timeout=900 "$@"
rc=$?
set -e
echo "test: suite took $(( $(date +%s) - start )) s"
exit $rc
