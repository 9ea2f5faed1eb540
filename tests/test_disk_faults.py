"""The results folder's disk fills up in the middle of a study, for real: the study
folder is a 100 MB tmpfs (in a mount namespace of its own, `unshare`), and once the
first trial has ended a file takes all its space. What must hold: the run stops with
one line naming the folder (exit 2), the trial that ended keeps its results, and once
there is space the same command finishes the study without training anything twice.
Also: the watch's probe names a read-only or unwritable folder (sweeps/diskwatch.py).

    .venv/bin/python -m pytest -q tests/test_disk_faults.py
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeps import diskwatch
from trainables.contract import read_rows, trial_folders

pytestmark = pytest.mark.study  # runs studies on Ray: left out of `make test-fast`

REPO = Path(__file__).resolve().parent.parent

# Four MLP trials of about 5-8 s each, one at a time (Ray gets one CPU).
SPEC = """\
name: disk
family: classifier
description: disk fault test
fixed: {dataset: mnist, model: mlp, hidden: [512], epochs: 3, train_size: 30000, test_size: 500, batch_size: 32, lr: 0.05}
grid:
  weight_decay: [0, 0.001, 0.01, 0.1]
"""

# Runs as root of a mount namespace: mount the tmpfs, run, fill it after the first
# trial ends, wait, free it, run again; the study folder is copied out after each run.
SCRIPT = r"""
set -u
mount -t tmpfs -o size=100m tmpfs "$R" || exit 97
mountpoint -q "$R" || exit 97
run() { timeout 300 "$PY" -m sweeps run "$SPEC" --results "$R" > "$OUT/run$1.out" 2> "$OUT/run$1.err"; echo $? > "$OUT/run$1.code"; }
run 1 &
for i in $(seq 1 1500); do
  sleep 0.2
  grep -qs '"status": "ok"' "$R"/disk/tune/*/result.json && break
done
dd if=/dev/zero of="$R/filler" bs=1M count=200 2> /dev/null  # stops at the tmpfs's end
wait
cp -r "$R/disk" "$OUT/after1"
rm -f "$R/filler"
run 2
cp -r "$R/disk" "$OUT/after2"
umount "$R"
"""


def _namespace() -> list[str] | None:
    """How to get a mount namespace here: as root, `unshare -m`; else as the root of
    a user namespace. None when neither works."""
    if shutil.which("unshare") is None or shutil.which("mountpoint") is None:
        return None
    command = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    probe = subprocess.run([*command, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt && umount /mnt"],
                           capture_output=True)
    return command if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    command = _namespace()
    if command is None:
        pytest.skip("no mount namespace here (unshare -m / -Urm): cannot mount a small tmpfs")
    tmp = tmp_path_factory.mktemp("disk")
    spec, results, out = tmp / "disk.yaml", tmp / "results", tmp / "out"
    spec.write_text(SPEC)
    results.mkdir()
    out.mkdir()
    env = {**os.environ, "R": str(results), "OUT": str(out), "SPEC": str(spec), "PY": sys.executable,
           "RAY_OVERRIDE_RESOURCES": '{"CPU": 1}'}
    proc = subprocess.run([*command, "bash", "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {n: {"code": int((out / f"run{n}.code").read_text()), "out": (out / f"run{n}.out").read_text(),
                "err": (out / f"run{n}.err").read_text()} for n in (1, 2)}
    return {"results": results, "runs": runs, "after1": out / "after1", "after2": out / "after2"}


def _ended(folder: Path) -> dict[str, list[dict]]:
    """Trial folder -> its rows, for the trials whose last row says ok."""
    out = {}
    for name, dirs in trial_folders(folder).items():
        rows = [row for d in dirs for row in read_rows(d / "result.json")]
        if rows and rows[-1].get("status") == "ok":
            out[name] = rows
    return out


def test_a_full_disk_stops_the_run_in_one_line_naming_the_folder(filled):
    first = filled["runs"][1]
    lines = [line for line in first["err"].splitlines() if line.strip()]
    assert first["code"] == 2, first["out"][-2000:] + first["err"][-3000:]
    assert len(lines) == 1, first["err"][-3000:]
    folder = filled["results"] / "disk"
    assert re.fullmatch(rf"error: {re.escape(str(folder))}: no space left on device \(\d+ MB free, 16 MB needed\); "
                        r"the study stopped; (\d) of 4 trials ended and are kept; free some space \(or make the folder "
                        r"writable\) and run the same command again to finish it", lines[0]), lines[0]
    # Stopped at the first sign: no trial went through its retries against the full disk.
    assert "retry 2 of 2" not in first["out"] and "FAILED" not in first["out"], first["out"]


def test_the_trials_that_ended_are_intact_and_a_rerun_finishes_without_doubling(filled):
    second = filled["runs"][2]
    assert second["code"] == 0, second["out"][-3000:] + second["err"][-3000:]
    before, after = _ended(filled["after1"]), _ended(filled["after2"])
    assert before, "no trial had ended when the disk filled"
    for name, rows in before.items():  # kept as they were, not trained again
        assert after[name] == rows, name
        assert (filled["after2"] / "tune" / name / "result.json").read_bytes() == \
            (filled["after1"] / "tune" / name / "result.json").read_bytes()
    assert len(after) == 4
    history = pd.read_parquet(filled["after2"] / "history.parquet")
    epochs = history.groupby("trial_id")["epoch"].apply(list)
    assert len(epochs) == 4 and all(e == [1, 2, 3] for e in epochs), epochs  # each epoch once
    trials = pd.read_parquet(filled["after2"] / "trials.parquet")
    assert sorted(trials["status"]) == ["ok"] * 4
    assert "resuming disk" in second["out"], second["out"]
    record = json.loads((filled["after2"] / "study.json").read_text())
    assert record["provenance"].get("resumed") is True


def test_the_probe_names_a_read_only_or_unwritable_folder(tmp_path, monkeypatch):
    assert diskwatch.probe(tmp_path) is None
    assert not list(tmp_path.iterdir())  # the probe file is gone again
    real_open = os.open

    def failing(code):
        def fake_open(path, *args, **kwargs):
            if str(path).endswith(diskwatch.PROBE_FILE):
                raise OSError(code, os.strerror(code), str(path))
            return real_open(path, *args, **kwargs)
        return fake_open

    monkeypatch.setattr(os, "open", failing(errno.EROFS))
    assert diskwatch.probe(tmp_path) == "the file system is read-only"
    monkeypatch.setattr(os, "open", failing(errno.EACCES))
    assert diskwatch.probe(tmp_path) == "it is not writable (permission denied)"
    monkeypatch.setattr(diskwatch, "RESERVE_BYTES", shutil.disk_usage(tmp_path).free * 2)
    assert diskwatch.probe(tmp_path).startswith("no space left on device (")


def test_disk_errors_are_told_from_trial_errors():
    assert diskwatch.is_disk_error(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = RuntimeError("ray::ImplicitFunc.train() OSError: [Errno 28] Error writing bytes to file")
    assert diskwatch.is_disk_error(wrapped)
    assert not diskwatch.is_disk_error(ValueError("loss is nan"))
    assert not diskwatch.is_disk_error(OSError(errno.ENOENT, "No such file or directory"))
