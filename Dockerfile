# syntax=docker/dockerfile:1.7
#
# Serving image of the HLM keyword retrieval service: the "serve" extra only (no torch, no
# compilers), a non-root user, the artifact folder mounted at /artifact or baked in.
# Build, run, GPU variant and offline builds: docker/README.md.
#
#   CPU (default):  docker build -t hlm-retrieval .
#   GPU:            docker build -t hlm-retrieval:gpu \
#                     --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 \
#                     --build-arg ORT_PACKAGE=onnxruntime-gpu .
#   Artifact baked: docker build -t hlm-retrieval:demo --target runtime-baked \
#                     --build-context artifact=artifacts/demo .
#   Run:            docker run -p 8000:8000 -v "$PWD/artifacts/demo:/artifact:ro" hlm-retrieval

# Any Debian/Ubuntu image with Python >= 3.11 (or none: python3 is installed if missing).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
# builder: every wheel the runtime needs, hnswlib compiled here without -march=native so
# the image runs on any x86-64 CPU, not only on the build machine's.
FROM ${BASE_IMAGE} AS builder

# onnxruntime (CPU) or onnxruntime-gpu, optionally with a version ("onnxruntime-gpu<1.24"):
# exactly one of them ends up installed.
ARG ORT_PACKAGE=onnxruntime
# The pyproject extras the image installs: "serve" (hnswlib in memory), or "serve milvus" for
# HLM_INDEX_BACKEND=milvus against a cluster (deploy/k8s/configmap.yaml).
ARG EXTRAS="serve"
# Optional package index overrides (a mirror, a private index); empty means PyPI.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HNSWLIB_NO_NATIVE=1

# A C++ compiler for hnswlib; Python headers and venv only where the base lacks them
# (python:*-slim has both, a plain Debian/Ubuntu or CUDA image has neither).
# DL3008 (pin apt versions): the packages come from whichever distribution BASE_IMAGE is,
# so no version string is valid for all of them; the base image tag is the pin.
# hadolint ignore=DL3008
RUN set -- g++; \
    command -v python3 >/dev/null || set -- "$@" python3; \
    python3 -m venv /tmp/probe >/dev/null 2>&1 || set -- "$@" python3-venv; \
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
        || set -- "$@" python3-dev; \
    rm -rf /tmp/probe; \
    apt-get update \
    && apt-get install -y --no-install-recommends "$@" \
    && rm -rf /var/lib/apt/lists/*

# The runtime's virtual environment is assembled here and copied over whole: the same base
# image, so the same interpreter path. (Copying is content-addressed, so every builder --
# BuildKit, buildah -- invalidates it correctly, unlike a bind mount of /wheels.)
RUN python3 -m venv /opt/venv
WORKDIR /src

# Third-party dependencies first: rebuilt only when pyproject.toml changes. Every package
# becomes a wheel (hnswlib compiled here), then the venv installs from /wheels only.
# The CA bundle is an optional build secret for builds behind a TLS-intercepting proxy
# (docker/README.md); without it the image's own bundle is used.
COPY pyproject.toml ./
COPY docker/requirements.py docker/requirements.py
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    python3 docker/requirements.py pyproject.toml --onnxruntime "${ORT_PACKAGE}" --extra "${EXTRAS}" > requirements.txt \
    && cat requirements.txt \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
       /opt/venv/bin/pip wheel --wheel-dir /wheels --no-binary hnswlib -r requirements.txt \
    && /opt/venv/bin/pip install --no-index --find-links /wheels -r requirements.txt

# The project itself, only what serving needs: the CLI, the artifact contract, the torch-free
# backends and the service (no models/, no benchmarks/), as a wheel for the runtime.
COPY README.md* ./
COPY hlm ./hlm
COPY service ./service
COPY artifact ./artifact
COPY retrieval ./retrieval
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels/project .

# ---------------------------------------------------------------------------------------
# runtime: the artifact folder is mounted at /artifact (read-only is enough).
FROM ${BASE_IMAGE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# CUDA and plain OS images come without Python (the venv from the builder needs the same
# interpreter); no compiler is installed here.
# tini (Debian's) runs as pid 1: it forwards SIGTERM to hlm and reaps what exits. (hlm serve
# --workers N also works as pid 1 itself, but an init is what a container should have.)
# DL3008: as in the builder, the base image tag pins the distribution's packages.
# hadolint ignore=DL3008
RUN set -- tini; \
    command -v python3 >/dev/null || set -- "$@" python3; \
    apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 hlm \
    && useradd --no-log-init --uid 10001 --gid hlm --home-dir /srv/hlm --create-home --shell /usr/sbin/nologin hlm

# Dependencies (a large layer that changes only with pyproject.toml), then the project
# wheel (a small one): nothing is compiled or downloaded in this stage.
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /wheels/project/ /tmp/project/
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/project/*.whl \
    && rm -rf /tmp/project \
    && /opt/venv/bin/pip check

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HLM_ARTIFACT_DIR=/artifact \
    HLM_HOST=0.0.0.0 \
    HLM_PORT=8000 \
    HLM_PROVIDER=auto

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /srv/hlm
EXPOSE 8000

# Healthy = artifacts loaded and warmed (/readyz answers 200, 503 before). Loading and
# warming a large artifact takes a while, hence the start period.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('HLM_PORT', '8000'), timeout=2)"]

# No -g: tini signals hlm alone, whose supervisor drains its workers one SIGTERM each (a second
# SIGTERM to a worker would cut its drain short). -e 143: one process re-raises SIGTERM once it
# has shut down cleanly (uvicorn's way), which is exit 0 for a stop. Kubernetes `args:` keep
# this entrypoint.
ENTRYPOINT ["/usr/bin/tini", "-e", "143", "--"]
CMD ["hlm", "serve"]

# ---------------------------------------------------------------------------------------
# runtime-baked: the same image with one artifact folder copied in at /artifact. The
# folder comes from the named build context "artifact" (--build-context artifact=DIR), so
# the artifacts are never part of the main build context.
FROM scratch AS artifact

FROM runtime AS runtime-baked
# Read-only for everyone but root, whatever modes the folder had on the host (uid 10001
# must read it; the service verifies every file's sha256 at start-up anyway).
COPY --from=artifact --chown=root:root --chmod=0755 . /artifact/

# The default target stays the volume-mounted image.
FROM runtime AS runtime-default
