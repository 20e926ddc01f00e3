#!/usr/bin/env bash
# The default test run: system tools the tests drive for real, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Prometheus (promtool + a real server for the scrape test) and podman-free lints.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing prometheus (Debian package) for the real-scrape and promtool tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
      || echo "test: could not install prometheus; its tests will be skipped"
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
