"""bench/gpu_check.sh end to end on this machine: no GPU, and Ray and Optuna made
unimportable (as on the GPU machine), with a folder of one small wheel. It says "no
GPU" and skips the CUDA parts, installs the wheel offline, runs the tiny slice of the
wd study (the spec's smoke profile) in every mode and the engine figures on the CPU,
and writes its files into the one folder it is given. About 40 s on 2 cores."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel holding one module `name` (as pip builds them: METADATA,
    WHEEL, and a RECORD of every file's sha256)."""
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_the_gpu_check_runs_without_a_gpu_ray_or_optuna(tmp_path):
    blocked = tmp_path / "blocked"  # first on PYTHONPATH: importing these fails
    for name in ("ray", "optuna"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here (test)')\n")
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "gensweep_probe", "0.1")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocked), "GPU_CHECK_WHEELS": str(wheels),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    log = (out / "log.txt").read_text()
    assert proc.returncode == 0, log[-4000:] + proc.stderr[-2000:]

    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("env no GPU")
    assert [line.split()[:2] for line in summary[1:-1]] == [["wheels", "ok"], ["versions", "ok"], ["tests", "ok"],
                                                             ["wd", "ok"], ["engine", "ok"]]
    assert summary[-1].startswith("total ")
    for line in ("no GPU: torch.cuda.is_available() is False", "no GPU: the cuda tests skip",
                 "no GPU: training on the CPU", "no GPU: the engine figures are measured on the CPU",
                 "ray: missing (not needed)", "optuna: missing (optional)", "wheels: 1 from"):
        assert line in log, line
    assert not (out / "nvidia-smi.txt").exists() and not (out / "gpu-utilization.csv").exists()
    assert not list(tmp_path.glob("gensweep-gpu-site.*"))  # the wheels' folder is removed at the end

    versions = json.loads((out / "versions.json").read_text())
    assert versions["cuda_available"] is False and versions["torch"] == torch.__version__
    junit = (out / "pytest.xml").read_text()
    assert 'tests="11"' in junit and 'skipped="11"' in junit  # tests/test_cuda.py, all skipped

    wd = json.loads((out / "wd" / "wd.json").read_text())
    assert (wd["device"], wd["ray"], wd["slice"]["name"], wd["slice"]["cells"]) == ("cpu", "absent", "tiny", 2)
    assert list(wd["modes"]) == ["unpacked", "packed", "packed-fast", "unpacked-fast"]
    for name, mode in wd["modes"].items():
        assert (mode["cells_run"], mode["cell_epochs"], mode["truncated"]) == (2, 2, False), name
        assert mode["flops"] > 0 and mode["tflop_per_s"] > 0 and mode["gpu"] is None
    assert wd["modes"]["packed"]["pack_sizes"] == [2]
    assert wd["modes"]["packed-fast"]["options"] == {"precision": "bf16", "channels_last": True}  # no CUDA batch on CPU
    assert wd["agreement"]["packed"]["max_rel_train_loss"] < 1e-4  # float32: packed = unpacked to rounding
    assert wd["agreement"]["packed-fast"]["max_abs_test_acc"] < 0.05

    engine = json.loads((out / "engine" / "engine.json").read_text())["engine"]
    names = {f["name"] for f in engine["figures"]}
    assert {"matmul_peak_fp32", "mlp_train_tflop_per_s", "cnn_epoch_train_s", "packed_k8_speedup"} <= names
    assert engine["device"] == "cpu" and engine["ray"] == "absent"
