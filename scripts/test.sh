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
start=$(date +%s)
set +e
.venv/bin/python -m pytest -q --timeout=900 "$@"
rc=$?
set -e
echo "test: suite took $(( $(date +%s) - start )) s"
exit $rc
