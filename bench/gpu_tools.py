"""What the GPU check (bench/gpu_check.sh) needs around its drivers (bench.gpu_wd,
bench.gpu_engine): running gensweep's engine where Ray is not installed, the
machine's versions, GPU utilization sampled by nvidia-smi, and FLOP counts.

    python -m bench.gpu_tools versions --out gpu-check-out/versions.json

prints one line per version (and "no GPU: ..." without one) and writes them as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

# Distributions whose versions the check records (absent ones as "absent").
PACKAGES = ("torchvision", "numpy", "pandas", "pyarrow", "pydantic", "pydantic-core", "optuna", "pytest", "ray",
            "psutil", "PyYAML")


def ray_version() -> str:
    """Ray's version, or "absent" where it is not installed: the engine and the family
    modules import Ray only inside a trial (trainables/trial.py), so they run here."""
    try:
        import ray
    except ImportError:
        return "absent"
    return getattr(ray, "__version__", "unknown")


def versions() -> dict:
    """Python, torch, CUDA, cuDNN, the GPU, torch's float32 settings and the packages."""
    import torch

    cuda = torch.cuda.is_available()
    info = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "highest": no TF32 in matmuls
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,  # torch's default True: TF32 convolutions
        "gpu_count": torch.cuda.device_count() if cuda else 0,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_multiprocessors=props.multi_processor_count,
                    bf16_supported=torch.cuda.is_bf16_supported())
    return {**info, **{name: _version(name) for name in PACKAGES}}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


class GpuSampler:
    """nvidia-smi's utilization (%) and memory in use (MiB) of every GPU, every
    `interval_ms`, into the CSV file `path` while the block runs; `summary()` after.
    Without nvidia-smi (or with `enabled=False`) it samples nothing and summarizes to None."""

    def __init__(self, path: Path, interval_ms: int = 500, enabled: bool = True) -> None:
        self.path, self.interval_ms = Path(path), interval_ms
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "GpuSampler":
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w")
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=timestamp,index,utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", f"--loop-ms={self.interval_ms}"],
                stdout=self._file, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self._file.close()

    def summary(self) -> dict | None:
        """{gpu index: {"samples", "util_mean_pct", "util_max_pct", "memory_max_mib"}}."""
        if not self.enabled or not self.path.exists():
            return None
        per_gpu: dict[str, list[tuple[float, float]]] = {}
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                per_gpu.setdefault(parts[1], []).append((float(parts[2]), float(parts[3])))
            except (IndexError, ValueError):  # a partial last line, or "[N/A]"
                continue
        return {gpu: {"samples": len(rows), "util_mean_pct": round(sum(u for u, _ in rows) / len(rows), 1),
                      "util_max_pct": max(u for u, _ in rows), "memory_max_mib": max(m for _, m in rows)}
                for gpu, rows in per_gpu.items()} or None


def chosen_device(choice: str, doing: str):
    """The torch device for a driver's --device auto|cpu|cuda (auto: the first GPU
    if torch sees one), saying so when it is the CPU ("no GPU: <doing> on the CPU");
    None, after an error line, for cuda where torch sees none."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        return None
    if choice != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", 0)
    print(f"no GPU: {doing} on the CPU" if choice == "auto" else f"{doing} on the CPU (--device cpu)")
    return torch.device("cpu")


def image_flops(model, input_shape: Sequence[int], num_classes: int, batch: int = 2) -> tuple[float, float]:
    """(FLOPs per image of a training step: forward, cross-entropy and backward; FLOPs
    per image of an evaluation forward pass), as torch's FlopCounterMode counts them
    (matmuls and convolutions, multiply-add = 2; not elementwise ops, BatchNorm or
    the optimizer), on a CPU copy of `model`. Counts are linear in the batch, so a
    tiny one gives the per-image figure."""
    import torch
    from torch.nn import functional as F
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model).cpu().float().train()
    x, y = torch.randn(batch, *input_shape), torch.randint(0, num_classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    train = counter.get_total_flops() / batch
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return train, counter.get_total_flops() / batch


def print_versions(info: dict) -> None:
    if not info["cuda_available"]:
        print("no GPU: torch.cuda.is_available() is False; the CUDA parts are skipped")
    for key, value in info.items():
        print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_tools", description="the GPU check's helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("versions", help="print and write the machine's versions")
    show.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    info = versions()
    print_versions(info)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
