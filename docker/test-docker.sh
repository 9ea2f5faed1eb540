#!/usr/bin/env bash
# End-to-end check of the image, runnable where no image registry is reachable:
#   1. build the local base image (docker/build-base-image.sh; skipped when it exists),
#   2. build the real docker/Dockerfile with BASE_IMAGE pointing at it,
#   3. run the smoke profile of sweeps/wd.yaml in a container as the image's non-root
#      user, results written to a host folder, then examples/own.yaml's (plugin
#      files and an .npz beside the mounted spec),
#   4. check on the host: history.parquet, trials.parquet, report/index.html, every
#      trial status ok; the image's Ray equals pyproject's pin and a Ray head starts
#      in it (the cluster-node role),
#   5. print the wall time.
#
#   make test-docker            # = bash docker/test-docker.sh
#
# Needs podman (and runc on the development machines) and, for the base image,
# root and debootstrap; as root with apt it installs what is missing. Measured on a
# 2-core development machine: cold (no base image, no build cache) 305 s (base image
# 82 s, image build 186 s), warm 43 s. Not part of `make test`: too slow for every CI
# run. Leaves the images (about 7 GB) for the next run; `make docker-clean` removes
# the gensweep one.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
MAKE="${MAKE:-make}"
BASE="${BASE_IMAGE_LOCAL:-localhost/debian-py:bookworm}"
IMAGE="${IMAGE:-gensweep:$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}"
RAY_PIN=$(grep -oE '"ray\[[a-z,]+\]==[0-9.]+"' pyproject.toml | grep -oE '[0-9]+\.[0-9]+\.[0-9]+')
step() { echo "== test-docker: $* ($(( $(date +%s) - start )) s)"; }
fail() { echo "test-docker FAILED: $*" >&2; exit 1; }

missing=()
for tool in podman debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
command -v podman >/dev/null && ! command -v runc >/dev/null && ! command -v crun >/dev/null && missing+=(runc)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        step "installing ${missing[*]} (and runc, uidmap)"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap uidmap >/dev/null
    else
        fail "needs ${missing[*]} (apt-get install podman runc debootstrap)"
    fi
fi
if [[ -z "${CONTAINERS_CONF:-}" ]] && command -v runc >/dev/null; then
    export CONTAINERS_CONF="$PWD/docker/containers.conf"
fi

step "base image $BASE"
bash docker/build-base-image.sh "$BASE"

step "building $IMAGE from docker/Dockerfile on $BASE"
"$MAKE" --no-print-directory -f docker/docker.mk docker-build ENGINE=podman IMAGE="$IMAGE" BASE_IMAGE="$BASE" \
    DOCKER_BUILD_ARGS="${DOCKER_BUILD_ARGS:---quiet}" >/dev/null
# A rebuild leaves the previous image's layers dangling.
podman image prune -f >/dev/null

step "image checks"
uid=$(podman run --rm --entrypoint id "$IMAGE" -u)
[[ $uid != 0 ]] || fail "the image's default user is root"
ray_version=$(podman run --rm --entrypoint ray "$IMAGE" --version)
[[ $ray_version == *"version $RAY_PIN"* ]] || fail "image has '$ray_version', pyproject pins ray $RAY_PIN"
echo "default user uid $uid; $ray_version (pyproject: $RAY_PIN)"
# The node role: the same ray CLI starts a head inside the container.
podman run --rm --shm-size=1g --entrypoint bash "$IMAGE" -c \
    'ray start --head --num-cpus=1 --disable-usage-stats >/tmp/ray-start.log 2>&1 || { cat /tmp/ray-start.log; exit 1; }
     python -c "import ray; ray.init(address=\"auto\", logging_level=\"ERROR\"); print(\"ray head in the container:\", ray.cluster_resources().get(\"CPU\"), \"CPU\")"
     ray stop >/dev/null 2>&1' || fail "ray start --head failed in the container"

step "smoke study of sweeps/wd.yaml in a container"
results=$(mktemp -d /tmp/gensweep-test-docker.XXXXXX)
trap 'rm -rf "$results"' EXIT
# The image's own user (uid 1000) writes the mounted folder, as on a cluster.
[[ $(id -u) == 0 ]] && chown "$uid:$uid" "$results" || chmod 777 "$results"
run_start=$(date +%s)
"$MAKE" --no-print-directory -f docker/docker.mk docker-run ENGINE=podman IMAGE="$IMAGE" SPEC=sweeps/wd.yaml \
    PROFILE=smoke RESULTS="$results" DOCKER_USER="$uid:$uid" ARGS="--progress-every 60" \
    || fail "the smoke study failed in the container"
run_s=$(( $(date +%s) - run_start ))

step "checking the results on the host"
study="$results/wd-smoke"
for f in history.parquet trials.parquet report/index.html; do
    [[ -s "$study/$f" ]] || fail "$study/$f is missing"
done
check=$(cat <<'PY'
import sys
import pandas as pd
trials = pd.read_parquet(sys.argv[1] + "/trials.parquet")
history = pd.read_parquet(sys.argv[1] + "/history.parquet")
statuses = trials["status"].tolist()
assert len(trials) == 2 and statuses == ["ok", "ok"], f"expected 2 trials with status ok, got {statuses}"
accs = trials["final_test_acc"].round(3).tolist()
print(f"{len(trials)} trials ok, {len(history)} history rows, final test_acc {accs}")
PY
)
if [[ -x .venv/bin/python ]]; then
    .venv/bin/python -c "$check" "$study" || fail "bad results"
else  # no venv on this host: read them with the image's pandas
    podman run --rm -v "$study:/study:ro" --entrypoint python "$IMAGE" -c "$check" /study || fail "bad results"
fi
owner=$(stat -c %u "$study/trials.parquet")
[[ $owner == "$uid" ]] || fail "results owned by uid $owner, expected the container user $uid"

step "plugins beside the mounted spec: examples/own.yaml (smoke) in a container"
"$MAKE" --no-print-directory -f docker/docker.mk docker-run ENGINE=podman IMAGE="$IMAGE" SPEC=examples/own.yaml \
    PROFILE=smoke RESULTS="$results" DOCKER_USER="$uid:$uid" ARGS="--progress-every 60" \
    || fail "the plugin example failed in the container"
own=$(cat <<'PY'
import sys
import pandas as pd
trials = pd.read_parquet(sys.argv[1] + "/trials.parquet")
assert len(trials) == 4 and (trials["status"] == "ok").all(), trials["status"].tolist()
assert trials["final_margin_mean"].notna().all() and trials["plugin_sha256"].str.contains("resmlp.py=").all()
print(f"plugin example: {len(trials)} trials ok, arch {sorted(trials['arch'].unique())}, dataset {trials['dataset'][0]}")
PY
)
if [[ -x .venv/bin/python ]]; then
    .venv/bin/python -c "$own" "$results/own-smoke" || fail "bad plugin example results"
else
    podman run --rm -v "$results/own-smoke:/study:ro" --entrypoint python "$IMAGE" -c "$own" /study || fail "bad plugin example results"
fi

echo "test-docker passed: image $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.1f GB", $1/1e9}')), smoke run ${run_s} s, wall time $(( $(date +%s) - start )) s"
