#!/usr/bin/env bash
# Build a minimal Debian bookworm base image (python3, python3-venv, ca-certificates)
# from the local Debian mirror and import it as localhost/hlm-base:bookworm, for machines
# that cannot pull base images from a registry. Idempotent: does nothing if the image exists.
#
#   sudo docker/make-local-base.sh                    # image localhost/hlm-base:bookworm
#   BASE_TAG=localhost/hlm-base:test MIRROR=http://deb.debian.org/debian docker/make-local-base.sh
#
# Needs root (debootstrap) and debootstrap + podman or docker on the host.
set -euo pipefail

BASE_TAG="${BASE_TAG:-localhost/hlm-base:bookworm}"
SUITE="${SUITE:-bookworm}"
PACKAGES="${PACKAGES:-python3,python3-venv,ca-certificates}"

if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
    engine="$CONTAINER_ENGINE"
elif command -v podman >/dev/null 2>&1; then
    engine=podman
elif command -v docker >/dev/null 2>&1; then
    engine=docker
else
    echo "make-local-base: neither podman nor docker is installed" >&2
    exit 1
fi

if "$engine" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    echo "make-local-base: $BASE_TAG already exists, nothing to do"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "make-local-base: debootstrap is missing (apt-get install -y debootstrap)" >&2
    exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "make-local-base: debootstrap needs root" >&2
    exit 1
fi

# The mirror this machine's apt already uses (deb822 "URIs:" or one-line "deb URL suite").
if [[ -z "${MIRROR:-}" ]]; then
    MIRROR="$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
        | awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}
               /^deb / && $0 ~ / bookworm / {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $i ~ /\/debian\/?$/) {print $i; exit}}')"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

rootfs="$(mktemp -d /tmp/hlm-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "make-local-base: debootstrap $SUITE from $MIRROR into $rootfs"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"

# Make it look like a regular slim image: apt sources present, caches and docs gone.
printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" \
    > "$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/log/*.log "$rootfs"/tmp/*

tar --numeric-owner -C "$rootfs" -c . | "$engine" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE_TAG"

echo "make-local-base: imported $BASE_TAG ($("$engine" image inspect --format '{{.Size}}' "$BASE_TAG") bytes)"
