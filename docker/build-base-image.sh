#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim-bookworm when no image registry is
# reachable (the development machines): debootstrap a minimal Debian bookworm with
# its Python 3.11, add this machine's extra CA certificates (HTTPS goes through a
# proxy with its own CA, so pip and apt inside builds need them) and `podman import`
# the tree. Idempotent: does nothing when the image already exists.
#
#   docker/build-base-image.sh [IMAGE]      # default localhost/debian-py:bookworm
#   make -f docker/docker.mk docker-base
#
# Needs root, debootstrap and podman. Takes about a minute; the image is about 200 MB.
# Debian's python has no `python` command and refuses system-wide pip: the
# Dockerfile builds into a venv, which works on this image and on the official one.
set -euo pipefail

IMAGE="${1:-${BASE_IMAGE_LOCAL:-localhost/debian-py:bookworm}}"
SUITE=bookworm  # Python 3.11, the version pyproject.toml requires
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${CONTAINERS_CONF:-}" ]] && command -v runc >/dev/null; then
    export CONTAINERS_CONF="$HERE/containers.conf"
fi

if podman image exists "$IMAGE"; then
    echo "base image $IMAGE exists; skipping (podman rmi $IMAGE to rebuild)"
    exit 0
fi
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install $tool)" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "error: debootstrap needs root" >&2; exit 2; }

# The mirror apt already uses here (reachable through the proxy), unless MIRROR is given.
if [[ -z "${MIRROR:-}" ]]; then
    MIRROR=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list \
             2>/dev/null | grep -v security | head -1 | awk '{print $2}' || true)
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

start=$(date +%s)
ROOTFS=$(mktemp -d /var/tmp/gensweep-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"

# Local CAs (the folder update-ca-certificates reads) so HTTPS works inside builds.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
fi
# apt's package cache and lists are build leftovers (the Dockerfile runs apt-get update).
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

tar -C "$ROOTFS" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --quiet - "$IMAGE" >/dev/null
echo "built $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')) in $(( $(date +%s) - start )) s"
