"""Engine-level figures on a device (the GPU where there is one), without Ray: what
bench/datapath.py, bench/flops.py and the in-process half of bench/packing.py measure
on CPU. The GPU check (bench/gpu_check.sh) runs it.

    python -m bench.gpu_engine --out gpu-check-out/engine           # cuda if available
    python -m bench.gpu_engine --out DIR --device cpu --quick       # plumbing

Figures (each the median of --reps repetitions after a warm-up, bench.record.repeat):
- matmul_peak_fp32 / _tf32 / _bf16 (CUDA; CPU: float32 only): torch.mm of two
  PEAK_SIDE x PEAK_SIDE matrices, TFLOP/s: the device's limit for what follows;
- mlp_epoch_train_s, mlp_epoch_eval_s: bench.datapath.engine_epoch's MLP case (the
  784-512-10 MLP, Adam, batch 128, 60k images, evaluated on 60k + 10k) with its
  splits and model on the device; mlp_train_tflop_per_s and its share of the fp32 and
  tf32 peaks (FLOPs: bench.flops.mlp_train_flops);
- cnn_epoch_train_s, cnn_epoch_eval_s, cnn_train_tflop_per_s: the datapath CNN case
  (cnn_overparam on 1k images, tested on 2k; FLOPs: bench.gpu_tools.image_flops);
- packed_k8_speedup, packed_k32_speedup: model-steps per second of K packed
  784-128-10 MLPs over one (bench/packing.py's in-process set-up: 2,000 images, 2
  epochs, batch 64, SGD; no evaluation but fit's last one of the training split).

Writes DIR/engine.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from bench import gpu_tools

PEAK_SIDE = 8192  # 1.1 TFLOP per product: milliseconds on a GPU, at its peak
QUICK_PEAK_SIDE = 1024
PEAK_CALLS = 20
PACKED = {"hidden": [128], "train_size": 2000, "epochs": 2, "batch_size": 64, "lr": 0.05}  # bench/packing.py's FULL
QUICK_PACKED = {**PACKED, "train_size": 300, "epochs": 1}
PACK_SIZES = (1, 8, 32)


def cuda_matmul_peak(side: int, dtype, tf32: bool = False) -> float:
    """FLOP/s of torch.mm on two side x side matrices on the GPU (CUDA events; the
    first product is a warm-up). `tf32`: TF32 tensor cores for float32."""
    import torch

    matmul = torch.backends.cuda.matmul
    before, matmul.allow_tf32 = matmul.allow_tf32, tf32
    try:
        a, b = (torch.randn(side, side, device="cuda", dtype=dtype) for _ in range(2))
        out = torch.mm(a, b)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(PEAK_CALLS):
            torch.mm(a, b, out=out)
        end.record()
        end.synchronize()
        return 2 * side**3 * PEAK_CALLS / (begin.elapsed_time(end) / 1e3)  # elapsed_time: milliseconds
    finally:
        matmul.allow_tf32 = before


@contextlib.contextmanager
def on_device(device) -> Iterator[None]:
    """bench.datapath's engine epoch, which builds CPU splits and a CPU model, with
    both on `device`: its `make_splits` and `build_model` replaced while the block runs."""
    from bench import datapath

    make_splits, build_model = datapath.make_splits, datapath.build_model
    datapath.make_splits = lambda ds, cfg, _cpu: make_splits(ds, cfg, device)
    datapath.build_model = lambda *args, **kwargs: build_model(*args, **kwargs).to(device)
    try:
        yield
    finally:
        datapath.make_splits, datapath.build_model = make_splits, build_model


def packed_rates(device, reps: int, quick: bool) -> dict[int, list[float]]:
    """Model-steps per second of K = 1, 8, 32 MLPs trained together on `device`
    (K = 1: engine.fit of one module), per repetition."""
    import torch

    from bench.datapath import mnist
    from bench.record import repeat
    from trainables.classifier import ClassifierConfig, make_splits
    from trainables.engine import EngineConfig, fit
    from trainables.models import build_model
    from trainables.packed import PackedModels

    sizes = QUICK_PACKED if quick else PACKED
    train = make_splits(mnist(), ClassifierConfig(train_size=sizes["train_size"]), device)["train"]
    steps = sizes["epochs"] * -(-sizes["train_size"] // sizes["batch_size"])

    def rate(k: int) -> float:
        cfgs = [EngineConfig(lr=sizes["lr"], weight_decay=1e-4 * i, seed=i, batch_size=sizes["batch_size"],
                             epochs=sizes["epochs"]) for i in range(k)]
        models = []
        for cfg in cfgs:
            torch.manual_seed(cfg.seed)
            models.append(build_model("mlp", hidden=sizes["hidden"]).to(device))
        started = time.perf_counter()
        if k == 1:
            fit(models[0], train, {}, cfgs[0], lambda m, s: None)
        else:
            fit(PackedModels(models), train, {}, cfgs, lambda r, s: None, names=[str(i) for i in range(k)])
        return k * steps / (time.perf_counter() - started)  # fit's reports synchronize the device

    return {k: repeat(lambda: rate(k), reps) for k in PACK_SIZES}


def measure(device, reps: int, quick: bool) -> list:
    import torch

    from bench import datapath
    from bench.flops import matmul_peak, mlp_train_flops
    from bench.record import Figure, median, repeat
    from trainables.classifier import ClassifierConfig, build_for, dataset_info, parse_config

    side = QUICK_PEAK_SIDE if quick else PEAK_SIDE
    figures, peaks = [], {}
    if device.type == "cuda":
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            peaks[name] = median(repeat(lambda: cuda_matmul_peak(side, dtype, tf32), reps))
    else:
        peaks["fp32"] = median(repeat(lambda: matmul_peak(min(side, 2048)), reps))
    for name, value in peaks.items():
        figures.append(Figure(f"matmul_peak_{name}", value / 1e12, unit="TFLOP/s",
                              notes=f"torch.mm {side}x{side}" if device.type == "cuda" else "torch.mm, CPU"))
    for case in ("mlp", "cnn"):
        config = datapath.case_config(case, quick)
        with on_device(device):
            epochs = repeat(lambda: datapath.engine_epoch(config), reps)
        cfg, model_args = parse_config(ClassifierConfig, config)
        images = len(datapath.mnist().train_y) if cfg.train_size is None else cfg.train_size
        if case == "mlp":
            flops = mlp_train_flops(images, model_args["hidden"])
        else:
            info = dataset_info(cfg.dataset)
            flops = images * gpu_tools.image_flops(build_for(info, cfg, model_args), info.input_shape,
                                                   info.num_classes)[0]
        train_s = [e.train_s for e in epochs]
        rates = [flops / t / 1e12 for t in train_s]
        figures += [Figure.of(f"{case}_epoch_train_s", train_s, unit="s", higher_is_better=False,
                              notes=f"{images} images, batch {cfg.batch_size}, {cfg.optimizer}, on {device}"),
                    Figure.of(f"{case}_epoch_eval_s", [e.eval_s for e in epochs], unit="s", higher_is_better=False),
                    Figure.of(f"{case}_train_tflop_per_s", rates, unit="TFLOP/s",
                              notes=f"{flops / 1e9:.1f} GFLOP per epoch; "
                                    + ", ".join(f"{100 * median(rates) * 1e12 / p:.1f}% of the {n} peak"
                                                for n, p in peaks.items() if n != "bf16"))]
    rates = packed_rates(device, reps, quick)
    one = median(rates[1])
    figures.append(Figure.of("packed_k1_model_steps_per_s", rates[1], unit="steps/s"))
    for k in PACK_SIZES[1:]:
        figures.append(Figure.of(f"packed_k{k}_speedup", [r / one for r in rates[k]], unit="x",
                                 notes=f"model-steps/s of {k} packed 784-128-10 MLPs over one, on {device}"))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for engine.json")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    parser.add_argument("--reps", type=int, default=3, help="repetitions after a warm-up (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: plumbing only")
    args = parser.parse_args(argv)
    ray_version = gpu_tools.ray_version()
    from bench.__main__ import print_table

    device = gpu_tools.chosen_device(args.device, "the engine figures are measured")
    if device is None:
        return 2
    started = time.perf_counter()
    figures = measure(device, args.reps, args.quick)
    entry = {"seconds": round(time.perf_counter() - started, 1), "reps": args.reps, "quick": args.quick,
             "device": str(device), "ray": ray_version, "figures": [f.to_dict() for f in figures]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine.json").write_text(json.dumps({"versions": gpu_tools.versions(), "engine": entry}, indent=2) + "\n")
    print_table({"engine": entry})
    print(f"results: {args.out / 'engine.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
