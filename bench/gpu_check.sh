#!/usr/bin/env bash
# gensweep on a GPU, checked in one call (issue 15): versions, the cuda tests, the
# wd study's cells packed and unpacked, and the engine's figures, in under 8 minutes,
# without Ray or the network. Everything it writes goes into one folder.
#
#   bench/gpu_check.sh [OUT]                 # OUT: $GPU_CHECK_OUT, else gpu-check-out/ (git-ignored)
#   GPU_CHECK_TINY=1 bench/gpu_check.sh OUT  # the tiny slice on a GPU too: plumbing in about a minute
#
# Steps (each with a time limit, all within GPU_CHECK_BUDGET_S, default 450 s):
#  1. env       nvidia-smi's report and GPU list -> OUT/nvidia-smi.txt. Without a GPU it
#               says so in one line ("no GPU: ..."), skips the CUDA parts, and runs the
#               tiny slice on the CPU (a full slice takes hours there).
#  2. wheels    installs every wheel in GPU_CHECK_WHEELS (default gpu-wheels/, git-ignored)
#               offline into a temporary folder put first on PYTHONPATH (pip install
#               --no-index --no-deps --target; without pip, unzipped: a wheel is a zip of
#               site-packages files). Nothing outside that folder changes.
#  3. versions  python, torch, CUDA, cuDNN, the GPU, TF32 settings, packages -> OUT/versions.json
#  4. tests     pytest tests/test_cuda.py (marked cuda: they skip without a GPU), plus
#               tests/test_engine_gpu_options.py and tests/test_engine.py (CPU tests, for
#               this machine's torch) unless tiny -> OUT/pytest.txt, OUT/pytest.xml
#  5. wd        python -m bench.gpu_wd: sweeps/wd.yaml's 36 cells for 3 epochs (slice
#               "check"; tiny: its smoke profile) through the trial's code, unpacked,
#               packed, and both with bf16 + channels_last + larger evaluation batches,
#               GPU_CHECK_WD_BUDGET_S (60) seconds each -> OUT/wd/ (wd.json, gpu-*.csv)
#  6. engine    python -m bench.gpu_engine: matmul peaks, the datapath MLP and CNN epochs,
#               packed-MLP speed-ups on the device -> OUT/engine/engine.json
# All output also goes to OUT/log.txt; OUT/gpu-utilization.csv samples nvidia-smi
# every second throughout; OUT/summary.txt has one line per step (ok, FAILED rc, or
# skipped, and seconds). Exit status 0 when every step that ran passed.
#
# Needs Python 3.11-3.13 with torch (gensweep uses nothing newer than 2.11), torchvision, numpy, PyYAML, and
# pydantic (required) and pytest (step 4) from the wheels where absent. Not Ray (the
# trials' code imports Ray only inside a Ray trial: trainables/trial.py) and not Optuna
# (only sweeps' searches import it; optional).
#
# The wheels, fetched on a machine with network, for CPython 3.12 on x86-64 Linux (the
# GPU machine's), pinned to the development venv's versions; --no-deps because numpy,
# PyYAML and torch's own dependencies are on that machine already:
#
#   pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp --abi cp312 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#     -d gpu-wheels \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-extensions==4.16.0 \
#     typing-inspection==0.4.5 \
#     pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 packaging==26.4 \
#     optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 markupsafe==3.0.4 colorlog==6.12.0 tqdm==4.70.1
#
# 17 wheels, 10.3 MB (downloaded 2026-12-01): pydantic and its four (2.8 MB), pytest
# and its four (1.8 MB), optuna and its six (5.7 MB; they may be left out: nothing
# here imports them). With the checkout (13 MB, 11.6 MB of it MNIST) that is 24 MB of
# the 64 MiB that may travel to the GPU machine (carry gpu-wheels/: it is git-ignored).

set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${1:-${GPU_CHECK_OUT:-$REPO/gpu-check-out}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
WHEELS=${GPU_CHECK_WHEELS:-$REPO/gpu-wheels}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
WD_BUDGET=${GPU_CHECK_WD_BUDGET_S:-60}
TINY=${GPU_CHECK_TINY:-0}
cd "$REPO" || exit 2
export GENSWEEP_OFFLINE=1  # no network there: a missing dataset file is a one-line error
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT_DIR/summary.txt"
exec > >(tee "$OUT_DIR/log.txt") 2>&1
TEE=$!

SAMPLER=""
SITE=""
cleanup() {
    [[ -n $SAMPLER ]] && kill "$SAMPLER" 2> /dev/null
    [[ -n $SITE ]] && rm -rf "$SITE"
    exec 1>&- 2>&-  # tee ends at end of input: wait for it, so log.txt is whole when this exits
    wait "$TEE" 2> /dev/null
}
trap cleanup EXIT

FAILED=0
# step NAME LIMIT_S OUTPUT_FILE|- COMMAND...: run COMMAND for at most LIMIT_S seconds
# (less if the total budget is nearly spent), copy its output to OUTPUT_FILE, and
# record its status and seconds in summary.txt.
step() {
    local name=$1 limit=$2 file=$3
    shift 3
    local left=$((BUDGET - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        echo "== $name: skipped (the ${BUDGET} s budget is spent)"
        echo "$name skipped (budget) 0 s" >> "$OUT_DIR/summary.txt"
        return
    fi
    echo "== $name (at most ${limit} s): $*"
    local started=$SECONDS rc
    if [[ $file == - ]]; then
        timeout --kill-after=10 "$limit" "$@"
        rc=$?
    else
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$file"
        rc=${PIPESTATUS[0]}
    fi
    local took=$((SECONDS - started)) status=ok
    if ((rc != 0)); then
        status="FAILED rc=$rc$( ((rc == 124 || rc == 137)) && echo ' (time limit)')"
        FAILED=1
    fi
    echo "== $name: $status in ${took} s"
    echo "$name $status ${took} s" >> "$OUT_DIR/summary.txt"
}

skip() {  # skip NAME WHY
    echo "== $1: skipped: $2"
    echo "$1 skipped: $2" >> "$OUT_DIR/summary.txt"
}

echo "gensweep GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname), output in $OUT_DIR"

# 1. env
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    { nvidia-smi; nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv; } \
        > "$OUT_DIR/nvidia-smi.txt" 2>&1
    cat "$OUT_DIR/nvidia-smi.txt"
    nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv --loop-ms=1000 \
        > "$OUT_DIR/gpu-utilization.csv" 2> /dev/null &
    SAMPLER=$!
    SMI="nvidia-smi lists a GPU"
else
    SMI="nvidia-smi finds none"
fi
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    GPU=1
    echo "env ok ($SMI; torch sees CUDA)" >> "$OUT_DIR/summary.txt"
else
    GPU=0
    TINY=1  # the full slice takes hours on a CPU
    echo "no GPU: torch.cuda.is_available() is False ($SMI); skipping the CUDA parts (GPU sampling, the cuda tests, CUDA figures) and running the tiny slice on the CPU"
    echo "env no GPU: $SMI, torch sees no CUDA" >> "$OUT_DIR/summary.txt"
fi

# 2. wheels
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
    SITE=$(mktemp -d "${TMPDIR:-/tmp}/gensweep-gpu-site.XXXXXX")
    if "$PY" -m pip --version > /dev/null 2>&1; then
        step wheels 120 - "$PY" -m pip --isolated install --no-index --no-deps --disable-pip-version-check \
            --no-warn-script-location --quiet --target "$SITE" "${wheels[@]}"
    else  # a wheel is a zip of the files it puts into site-packages
        step wheels 120 - bash -c 'py=$1 site=$2; shift 2; for w; do "$py" -m zipfile -e "$w" "$site" || exit; done' \
            _ "$PY" "$SITE" "${wheels[@]}"
    fi
    export PYTHONPATH="$SITE:$PYTHONPATH"
    echo "wheels: ${#wheels[@]} from $WHEELS into $SITE (first on PYTHONPATH)"
else
    skip wheels "no $WHEELS/*.whl: using what $PY has"
fi
"$PY" - << 'EOF'
import importlib
for name, need in (("pydantic", "required"), ("pytest", "for the tests"), ("optuna", "optional"), ("ray", "not needed")):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', '?')} ({need})")
    except Exception as exc:
        print(f"{name}: missing ({need}): {type(exc).__name__}")
EOF

# 3. versions
step versions 60 - "$PY" -m bench.gpu_tools versions --out "$OUT_DIR/versions.json"

# 4. tests
tests=(tests/test_cuda.py)
((TINY)) || tests+=(tests/test_engine_gpu_options.py tests/test_engine.py)
if "$PY" -c "import pytest" 2> /dev/null; then
    ((GPU)) || echo "no GPU: the cuda tests skip (tests/conftest.py)"
    step tests 150 "$OUT_DIR/pytest.txt" "$PY" -m pytest -q -rs -p no:cacheprovider \
        --junitxml="$OUT_DIR/pytest.xml" "${tests[@]}"
else
    skip tests "pytest missing: carry its wheels (bench/gpu_check.sh's header)"
fi

# 5. wd
if ((TINY)); then
    wd_args=(--slice tiny)
else
    wd_args=(--slice check --budget-s "$WD_BUDGET")
fi
step wd 330 - "$PY" -m bench.gpu_wd --out "$OUT_DIR/wd" "${wd_args[@]}"

# 6. engine
engine_args=()
((TINY)) && engine_args=(--quick --reps 1)
step engine 120 - "$PY" -m bench.gpu_engine --out "$OUT_DIR/engine" ${engine_args[@]+"${engine_args[@]}"}

echo
echo "== summary ($SECONDS s in all; $OUT_DIR/summary.txt)"
cat "$OUT_DIR/summary.txt"
echo "total ${SECONDS} s" >> "$OUT_DIR/summary.txt"
exit "$FAILED"
