#!/usr/bin/env bash
# Container smoke test: build the serving image, run it with an artifact folder mounted,
# wait until it is ready, send real queries, check /metrics, stop it, clean up.
#
#   docker/smoke.sh [ARTIFACT_DIR]          # default $HLM_ARTIFACT or artifacts/demo
#
# Environment (all optional):
#   CONTAINER_ENGINE  podman or docker (default: podman if installed, else docker)
#   BASE_IMAGE        base image build argument (default python:3.11-slim-bookworm;
#                     localhost/hlm-base:bookworm from docker/make-local-base.sh offline)
#   ORT_PACKAGE       onnxruntime (default) or onnxruntime-gpu (optionally with a version)
#   IMAGE             tag to build and run (default localhost/hlm-retrieval:smoke)
#   CA_BUNDLE         CA bundle passed as build secret "ca" (default: the system bundle
#                     if present; empty: none)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL   passed on as build arguments when set
#   SKIP_BUILD=1      run an already built IMAGE
#   BUILD_ONLY=1      build IMAGE and stop (no artifact needed): fills the layer cache, so a
#                     later smoke run's build is a cache hit (scripts/test.sh starts one early)
#   PORT              host port on 127.0.0.1 (default: a free one)
#   READY_TIMEOUT     seconds to wait for /readyz (default 300)
set -euo pipefail

cd "$(dirname "$0")/.."

ARTIFACT="${1:-${HLM_ARTIFACT:-artifacts/demo}}"
IMAGE="${IMAGE:-localhost/hlm-retrieval:smoke}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
ORT_PACKAGE="${ORT_PACKAGE:-onnxruntime}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
if [[ -z "${CA_BUNDLE+set}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
    CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi

say() { printf 'smoke: %s\n' "$*"; }
die() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }

if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
    engine="$CONTAINER_ENGINE"
elif command -v podman >/dev/null 2>&1; then
    engine=podman
elif command -v docker >/dev/null 2>&1; then
    engine=docker
else
    die "neither podman nor docker is installed"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed on the host to send the queries"
[[ "${BUILD_ONLY:-0}" == 1 || -f "$ARTIFACT/manifest.json" ]] || die "no artifact at $ARTIFACT (manifest.json missing); build one with: hlm build --profile small"

# Explicit limits: rootful podman otherwise asks for 1048576 open files and processes,
# which sandboxed hosts refuse ("error setting rlimit ... operation not permitted").
hard_nofile="$(ulimit -Hn)"; [[ "$hard_nofile" == unlimited ]] && hard_nofile=1048576
nofile=$(( hard_nofile < 65536 ? hard_nofile : 65536 ))
limits=(--ulimit "nofile=$nofile:$nofile")
if [[ "$engine" == podman ]]; then
    hard_nproc="$(ulimit -Hu)"; [[ "$hard_nproc" == unlimited ]] && hard_nproc=1048576
    pid_max="$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)"
    nproc=$(( hard_nproc < pid_max ? hard_nproc : pid_max ))
    limits+=(--ulimit "nproc=$nproc:$nproc")
fi

name="hlm-smoke-$$"
stage=""
cleanup() {
    "$engine" rm -f "$name" >/dev/null 2>&1 || true
    # an if, not `[[ ]] && rm`: a false test as the trap's last command would be the exit status
    if [[ -n "$stage" ]]; then rm -rf "$stage"; fi
}
trap cleanup EXIT

# ---- build --------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    build=("$engine" build -t "$IMAGE" -f Dockerfile
           --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "ORT_PACKAGE=$ORT_PACKAGE")
    # OCI images drop HEALTHCHECK; podman keeps it only in the docker format.
    [[ "$engine" == podman ]] && build+=(--format docker "${limits[@]}")
    [[ -n "${CA_BUNDLE:-}" ]] && build+=(--secret "id=ca,src=$CA_BUNDLE")
    [[ -n "${PIP_INDEX_URL:-}" ]] && build+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
    [[ -n "${PIP_EXTRA_INDEX_URL:-}" ]] && build+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
    say "building $IMAGE from $BASE_IMAGE with $engine"
    t_build=$SECONDS
    if [[ "$engine" == docker ]]; then
        DOCKER_BUILDKIT=1 "${build[@]}" .
    else
        "${build[@]}" .
    fi
    say "built in $(( SECONDS - t_build )) s"
fi
if [[ "${BUILD_ONLY:-0}" == 1 ]]; then say "built $IMAGE (BUILD_ONLY: not run)"; exit 0; fi
"$engine" image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE does not exist"
image_bytes="$("$engine" image inspect --format '{{.Size}}' "$IMAGE")"

# ---- artifact -----------------------------------------------------------------------
# The image runs as uid 10001: every folder must be world-readable and searchable and
# every file world-readable. If not, mount a staged copy (hard links where possible).
artifact_abs="$(cd "$ARTIFACT" && pwd)"
if [[ -n "$(find "$artifact_abs" \( -type d ! -perm -o=rx \) -o \( -type f ! -perm -o=r \) | head -1)" ]]; then
    stage="$(mktemp -d /tmp/hlm-smoke-artifact.XXXXXX)"
    say "$ARTIFACT is not world-readable (the container runs as uid 10001): mounting a copy from $stage"
    if [[ -z "$(find "$artifact_abs" -type f ! -perm -o=r | head -1)" ]] \
            && cp -rl "$artifact_abs" "$stage/artifact" 2>/dev/null; then
        find "$stage/artifact" -type d -exec chmod a+rx {} +
    else
        rm -rf "$stage/artifact"
        cp -r "$artifact_abs" "$stage/artifact"
        chmod -R a+rX "$stage/artifact"
    fi
    artifact_abs="$stage/artifact"
fi

# ---- run ----------------------------------------------------------------------------
PORT="${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
base="http://127.0.0.1:$PORT"
say "starting $name on $base with $ARTIFACT mounted at /artifact"
t_start="$(date +%s.%N)"
"$engine" run -d --name "$name" "${limits[@]}" -p "127.0.0.1:$PORT:8000" \
    -v "$artifact_abs:/artifact:ro" "$IMAGE" >/dev/null

# Ready = the host sees /readyz 200 (the image's own HEALTHCHECK must agree, below).
wait_ready() {  # wait_ready CONTAINER T_START: sets $ready, seconds since T_START
    ready=""
    while :; do
        if python3 - "$base/readyz" <<'EOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)
EOF
            ready="$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$2")"
            return
        fi
        state="$("$engine" inspect --format '{{.State.Status}}' "$1" 2>/dev/null || echo gone)"
        if [[ "$state" != running && "$state" != created && "$state" != configured ]]; then
            "$engine" logs "$1" 2>&1 | tail -30 >&2 || true
            die "the container $1 stopped ($state) before it was ready"
        fi
        if python3 -c "import sys, time; sys.exit(time.time() - float(sys.argv[1]) < float(sys.argv[2]))" "$2" "$READY_TIMEOUT"; then
            "$engine" logs "$1" 2>&1 | tail -30 >&2 || true
            die "$1 not ready after $READY_TIMEOUT s"
        fi
        sleep 0.2
    done
}
wait_ready "$name" "$t_start"
say "ready after $ready s"
ready_one="$ready"
"$engine" logs "$name" 2>&1 | grep -m1 -E 'ready:' | sed 's/^/smoke: service log: /' || true

if [[ "$engine" == podman ]]; then
    # Without systemd podman does not schedule health checks; run the image's check once.
    "$engine" healthcheck run "$name" >/dev/null 2>&1 || die "the image's HEALTHCHECK fails although /readyz answers"
    say "HEALTHCHECK: healthy"
else
    for _ in $(seq 1 30); do
        health="$("$engine" inspect --format '{{.State.Health.Status}}' "$name")"
        [[ "$health" == healthy ]] && break
        sleep 1
    done
    [[ "$health" == healthy ]] || die "HEALTHCHECK status is $health"
    say "HEALTHCHECK: healthy"
fi

# ---- inside the container: non-root, no torch, no compiler, one ONNX Runtime ----------
"$engine" exec -i "$name" python3 - <<'EOF' || die "image contents check failed"
import importlib.metadata as md, importlib.util, os, shutil, sys
problems = []
if os.getuid() == 0:
    problems.append("runs as root")
if importlib.util.find_spec("torch") is not None:
    problems.append("torch is installed")
for tool in ("gcc", "g++", "cc"):
    if shutil.which(tool):
        problems.append(f"compiler {tool} present")
installed = {d.metadata["Name"].lower() for d in md.distributions()}
ort = sorted(installed & {"onnxruntime", "onnxruntime-gpu"})
if len(ort) != 1:
    problems.append(f"expected exactly one ONNX Runtime package, found {ort}")
if problems:
    sys.exit("; ".join(problems))
print(f"smoke: image contents: uid {os.getuid()}, {ort[0]}, no torch, no compiler")
EOF

# ---- queries and metrics ------------------------------------------------------------
python3 - "$base" <<'EOF' || die "queries or metrics check failed"
import json, sys, urllib.request

base = sys.argv[1]

def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()

def search(body):
    status, raw = call("/v1/search", body)
    answer = json.loads(raw)
    results = answer["results"]
    assert status == 200 and results and all(r["keywords"] for r in results), answer
    return answer

shown = search({"query": "cordless drill", "k": 5})
for query in ("led light bulbs", "garden hose", "wood screws", "bathroom vanity with sink"):
    search({"query": query, "k": 10})
search({"query": "cordless drill", "k": 5, "encoder": "teacher"})
status, raw = call("/v1/info")
assert status == 200, status

status, raw = call("/metrics")
text = raw.decode()
assert "hlm_request_duration_seconds" in text, "hlm_request_duration_seconds missing from /metrics"
searched = [line for line in text.splitlines()
            if line.startswith("hlm_request_duration_seconds_count") and 'route="/v1/search"' in line]
assert any('encoder="student"' in line for line in searched), searched
assert any('encoder="teacher"' in line for line in searched), searched

top = shown["results"][0]["keywords"]
print(f'smoke: query "cordless drill" ({shown["encoder"]}, {shown.get("precision")}) answered in '
      f'{shown["timings"]["total_ms"]:.1f} ms server time:')
for hit in top[:3]:
    print(f'smoke:   {hit["score"]:.3f}  {hit["id"]}  {hit["text"]}')
print("smoke: /metrics: " + "; ".join(sorted(searched)[:2]))
EOF

# ---- stop: a clean shut-down exits 0 --------------------------------------------------
"$engine" stop -t 30 "$name" >/dev/null
code="$("$engine" inspect --format '{{.State.ExitCode}}' "$name")"
[[ "$code" == 0 ]] || { "$engine" logs "$name" 2>&1 | tail -20 >&2; die "exit code $code after stop"; }

# ---- --workers 2: the supervisor under tini, both workers answering, a clean stop ----------
"$engine" rm -f "$name" >/dev/null
token="smoke-token-$$"
t_start="$(date +%s.%N)"
"$engine" run -d --name "$name" "${limits[@]}" -p "127.0.0.1:$PORT:8000" -e HLM_WORKERS=2 \
    -e HLM_ADMIN_TOKEN="$token" -v "$artifact_abs:/artifact:ro" "$IMAGE" >/dev/null
wait_ready "$name" "$t_start"
init="$("$engine" exec "$name" cat /proc/1/comm)"
[[ "$init" == tini ]] || die "pid 1 in the container is $init, not tini"
python3 - "$base" "$token" <<'EOF' || die "--workers 2: not both workers answering"
import json, sys, urllib.request

base, token = sys.argv[1], sys.argv[2]
pids = set()
for _ in range(64):  # one connection each: the kernel spreads them over the workers (SO_REUSEPORT)
    req = urllib.request.Request(base + "/v1/info", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        process = json.loads(resp.read())["process"]
    assert process["workers"] == 2, process
    pids.add(process["pid"])
    if len(pids) == 2:
        break
assert len(pids) == 2, pids
req = urllib.request.Request(base + "/v1/search", data=json.dumps({"query": "cordless drill"}).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=30) as resp:
    assert json.loads(resp.read())["results"][0]["keywords"]
print(f"smoke: workers 2: ready, pid 1 is tini, workers {sorted(pids)} both answering")
EOF
"$engine" stop -t 60 "$name" >/dev/null
code="$("$engine" inspect --format '{{.State.ExitCode}}' "$name")"
drained="$("$engine" logs "$name" 2>&1 | grep -c 'shut down: queues drained' || true)"
if [[ "$code" != 0 || "$drained" != 2 ]]; then
    "$engine" logs "$name" 2>&1 | tail -20 >&2
    die "--workers 2: exit code $code, $drained workers drained"
fi
say "workers 2: stopped cleanly (exit 0, both workers drained)"

say "image $IMAGE: $(python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6:.0f} MB')" "$image_bytes")"
say "time to ready: $ready_one s"
say "stopped cleanly (exit 0)"
say "PASSED"
