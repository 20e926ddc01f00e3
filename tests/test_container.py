"""The serving image, built and run: docker/smoke.sh on the small artifact (`make docker-smoke`).

Builds the image with podman (docker where podman is absent) from a base image that
docker/make-local-base.sh debootstraps from the apt mirror (no registry needed; idempotent),
runs it with the artifact mounted, checks readiness, the image's HEALTHCHECK, its contents
(non-root, no torch, no compiler, one ONNX Runtime), real queries of both encoders,
/metrics, and a clean stop. scripts/test.sh installs podman; without an engine this test
fails rather than skips: the image is a promise of the README.

Cost on 2 cores: ~1 min for the base image (first time on a machine), ~2-3 min for the image
build on a cold layer cache (pip wheels, hnswlib compiled), ~20 s to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def engine() -> str:
    for name in ("podman", "docker"):
        if shutil.which(name):
            return name
    pytest.fail("neither podman nor docker is installed: the container smoke test cannot run "
                "(scripts/test.sh installs podman as root with apt-get)")


def test_the_image_builds_serves_the_artifact_and_stops_cleanly(small_artifact):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_")}
    env["CONTAINER_ENGINE"] = engine()
    if "BASE_IMAGE" not in env:  # a local base unless the caller names one (e.g. from a registry)
        env["BASE_IMAGE"] = base = "localhost/hlm-base:bookworm"
        made = subprocess.run(["docker/make-local-base.sh"], cwd=REPO, env={**env, "BASE_TAG": base},
                              capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    smoke = subprocess.run(["docker/smoke.sh", str(small_artifact)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=1200)
    out = smoke.stdout + smoke.stderr
    print(out[-4000:])
    assert smoke.returncode == 0, out[-6000:]
    for line in ("smoke: HEALTHCHECK: healthy", "no torch, no compiler", "smoke: stopped cleanly (exit 0)",
                 "smoke: workers 2: ready, pid 1 is tini", "smoke: workers 2: stopped cleanly", "smoke: PASSED"):
        assert line in out, line
