#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim-bookworm when no image registry is
# reachable (the development machines): debootstrap a minimal Debian bookworm with
# its Python 3.11, add this machine's extra CA certificates (HTTPS goes through a
# proxy with its own CA, so pip and apt inside builds need them) and `podman import`
# the tree. Idempotent: does nothing when the image already exists.
#
#   docker/build-base-image.sh [IMAGE]      # default localhost/debian-py:bookworm
#   docker/build-base-image.sh --print-mirror   # only print the Debian mirror it would use
#   make -f docker/docker.mk docker-base
#
# The Debian mirror: MIRROR= when given, else the one this machine's apt uses (the
# first enabled `deb` entry for Debian's main archive in $APT_SOURCES_DIR/sources.list,
# sources.list.d/*.list or sources.list.d/*.sources; APT_SOURCES_DIR defaults to
# /etc/apt). Neither: it fails and asks for MIRROR. No mirror is written here.
#
# Needs root, debootstrap and podman. Takes about a minute; the image is about 200 MB.
# Debian's python has no `python` command and refuses system-wide pip: the
# Dockerfile builds into a venv, which works on this image and on the official one.
set -euo pipefail

SUITE=bookworm  # Python 3.11, the lowest version pyproject.toml allows
APT_SOURCES_DIR="${APT_SOURCES_DIR:-/etc/apt}"

# Print the URI of the first enabled, non-security `deb` entry whose suite is a Debian
# release (SUITE, this machine's codename, stable/testing/unstable/sid, each possibly
# with -updates or -backports) and whose components include main: third-party
# repositories (their own suites, or no main component) and the security archive
# (which debootstrap cannot use) are passed over. Reads one-line `deb [opts] URI
# SUITE COMPONENT...` files and deb822 stanzas (Types/URIs/Suites/Components/Enabled).
apt_mirror() {
    local dir="$APT_SOURCES_DIR" codename="" files=()
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || codename=""
    [[ -f "$dir/sources.list" ]] && files+=("$dir/sources.list")
    # debian.sources first: Debian's own file, ahead of third-party ones.
    [[ -f "$dir/sources.list.d/debian.sources" ]] && files+=("$dir/sources.list.d/debian.sources")
    local f
    for f in "$dir"/sources.list.d/*.list "$dir"/sources.list.d/*.sources; do
        [[ -f "$f" && "$f" != "$dir/sources.list.d/debian.sources" ]] && files+=("$f")
    done
    ((${#files[@]})) || return 0
    awk -v suites="$SUITE $codename stable oldstable testing unstable sid" '
        function debian_suite(s,   base) {
            base = s; sub(/-(updates|backports|proposed-updates)$/, "", base)
            return (" " suites " ") ~ (" " base " ") && s !~ /security/
        }
        function consider(types, uris, suite_list, comps, enabled,   n, i, s, u) {
            if (tolower(enabled) == "no" || (" " types " ") !~ / deb /) return
            if ((" " comps " ") !~ / main /) return
            n = split(suite_list, s, " ")
            split(uris, u, " ")
            if (u[1] !~ /^https?:\/\// || u[1] ~ /security/) return
            for (i = 1; i <= n; i++) if (debian_suite(s[i])) { print u[1]; found = 1; exit }
        }
        function flush() {
            if (uris != "") consider(types, uris, suites822, comps, enabled)
            types = uris = suites822 = comps = enabled = ""; last = ""
        }
        FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
        /^[ \t]*#/ { next }
        !deb822 {
            line = $0; gsub(/\[[^]]*\]/, " ", line)   # [arch=... signed-by=...]
            n = split(line, w, " ")
            if (n >= 4 && w[1] == "deb") {
                c = ""; for (i = 4; i <= n; i++) c = c " " w[i]
                consider("deb", w[2], w[3], c, "yes")
            }
            next
        }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/ { if (last == "uris") uris = uris " " $0; else if (last == "suites") suites822 = suites822 " " $0
                    else if (last == "components") comps = comps " " $0; next }   # continuation line
        {
            key = tolower($0); sub(/:.*/, "", key); value = $0; sub(/^[^:]*:[ \t]*/, "", value)
            if (key == "types") types = value; else if (key == "uris") uris = value
            else if (key == "suites") suites822 = value; else if (key == "components") comps = value
            else if (key == "enabled") enabled = value
            last = key
        }
        END { if (!found) flush() }
    ' "${files[@]}"
}

mirror() {
    local m="${MIRROR:-}"
    [[ -n "$m" ]] || m=$(apt_mirror)
    if [[ -z "$m" ]]; then
        echo "error: no Debian mirror in $APT_SOURCES_DIR/sources.list or sources.list.d/*.{list,sources}; set MIRROR=<Debian mirror URL>" >&2
        return 2
    fi
    echo "$m"
}

if [[ "${1:-}" == "--print-mirror" ]]; then
    mirror
    exit
fi

IMAGE="${1:-${BASE_IMAGE_LOCAL:-localhost/debian-py:bookworm}}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${CONTAINERS_CONF:-}" ]] && command -v runc >/dev/null; then
    export CONTAINERS_CONF="$HERE/containers.conf"
fi

if podman image exists "$IMAGE"; then
    echo "base image $IMAGE exists; skipping (podman rmi $IMAGE to rebuild)"
    exit 0
fi
# The mirror apt already uses here (reachable through the proxy), unless MIRROR is given.
MIRROR=$(mirror) || exit 2
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install $tool)" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "error: debootstrap needs root" >&2; exit 2; }

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
