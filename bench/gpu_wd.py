"""The weight-decay study's cells (sweeps/wd.yaml) trained without Ray, through the
code a trial runs (trainables.classifier's `train` / `train_packed`: config parsing,
make_splits, build_for, engine.fit or PackedModels), in several modes, timed, with
FLOP/s and the GPU's utilization. The GPU check (bench/gpu_check.sh) runs it.

    python -m bench.gpu_wd --out gpu-check-out/wd                      # slice "check", every mode
    python -m bench.gpu_wd --out DIR --slice study --modes packed     # the full study, packed
    python -m bench.gpu_wd --out DIR --slice tiny --device cpu        # plumbing (tests/test_gpu_check.py)
    python -m bench.gpu_wd --out DIR --cells 6 --epochs 2             # the first 6 cells, 2 epochs

Slices (SLICES): "study" is the spec as written (36 cells x 30 epochs); "check" is its
36 cells for 3 epochs, from which the study's time is extrapolated; "tiny" is the
spec's smoke profile (2 cells, 1 epoch, 200 images, a quarter-width CNN).

Modes (MODES): one trial per cell (`unpacked`) or the cells that share everything
but PER_MODEL_KEYS in one packed trial (`packed`: 18 per training-set size), each at
the defaults and with the engine's GPU options (`-fast`: bf16, channels_last, larger
evaluation batches on CUDA). Each mode gets `--budget-s` seconds: a trial that would
run past it is stopped after its current epoch, and the study estimate scales up what
ran.

Writes DIR/wd.json (every number below, per mode and per trial; rewritten after
each mode) and one nvidia-smi CSV per mode, and prints a table:
- wall_s: the mode's trials one after another (splits to the device, models built,
  fit), after a warm-up trial of 2 steps that is not counted;
- TFLOP/s: matmul and convolution FLOPs (bench.gpu_tools.image_flops: training
  steps and every evaluation of the training and test splits) over wall_s;
- GPU util: nvidia-smi's utilization.gpu, mean and max over the mode;
- study_est_s: the slice's cells (all 36 for "check" and "study") at the spec's
  epochs in this mode, one trial at a time: per trial, its first epoch + its later
  epochs' mean x the remaining epochs + its set-up, scaled by images processed if
  the budget stopped the mode early;
- vs unpacked: the largest difference of the final test accuracy and the relative
  one of the final training loss against the unpacked run of the same cell.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

from bench import gpu_tools

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "sweeps" / "wd.yaml"
# name: (profile, epochs (None: the spec's)).
SLICES = {"study": (None, None), "check": (None, 3), "tiny": ("smoke", None)}
# The engine's GPU options (trainables/engine.py). A pack's evaluation batch holds K
# models' activations, so its CUDA batch is smaller.
FAST = {"precision": "bf16", "channels_last": True, "cuda_eval_batch_size": 4096}
FAST_PACKED = {**FAST, "cuda_eval_batch_size": 1024}
# name: (packed, config overrides)
MODES = {"unpacked": (False, {}), "packed": (True, {}), "packed-fast": (True, FAST_PACKED),
         "unpacked-fast": (False, FAST)}
BUDGET_S = 70.0  # per mode: four modes and their warm-ups fit the check's 8 minutes
WARMUP = {"max_steps": 2, "test_size": 256}  # CUDA context, cuBLAS/cuDNN handles, kernels' first launches


class OutOfTime(Exception):
    """Raised from a trial's report when the mode's budget is spent (after an epoch)."""


@contextlib.contextmanager
def outside_ray(device, on_report: Callable[[dict], None]) -> Iterator[None]:
    """classifier.train / train_packed as in a Ray trial, but on `device`, reporting
    to `on_report(metrics)` and starting fresh (no Tune checkpoint): the three
    functions trainables.trial gives a trial are replaced while the block runs."""
    from trainables import classifier

    saved = classifier.trial_device, classifier.tune_reporter, classifier.restored_state
    classifier.trial_device = lambda: (device, {"device": str(device)})
    classifier.tune_reporter = lambda extra: (lambda metrics, state: on_report(metrics))
    classifier.restored_state = lambda config: None
    try:
        yield
    finally:
        classifier.trial_device, classifier.tune_reporter, classifier.restored_state = saved


def cell_rows(report: dict, ids: list[str]) -> dict[str, dict]:
    """{cell id: metric row} of one report (a pack's members, or one trial's row)."""
    return report["members"] if "members" in report else {ids[0]: report}


def run_trial(cells: list[dict], ids: list[str], packed: bool, data: dict, device, deadline: float) -> dict:
    """One trial (a pack of cells, or one cell) to its end or to `deadline`: per cell
    its metric rows' essentials, and the trial's wall seconds."""
    from trainables import classifier

    rows: dict[str, list[dict]] = {i: [] for i in ids}

    def on_report(metrics: dict) -> None:
        for cid, row in cell_rows(metrics, ids).items():
            rows[cid].append({k: row.get(k) for k in ("epoch", "status", "train_loss", "train_acc", "test_loss",
                                                        "test_acc", "weight_norm", "time_s")})
        if time.perf_counter() > deadline and any(r[-1]["status"] == "running" for r in rows.values() if r):
            raise OutOfTime

    started, truncated = time.perf_counter(), False
    with outside_ray(device, on_report):
        try:
            if packed:
                classifier.train_packed(cells, ids, data)
            else:
                classifier.train(cells[0], data)
        except OutOfTime:
            truncated = True
    _sync(device)
    return {"ids": ids, "wall_s": time.perf_counter() - started, "truncated": truncated, "rows": rows}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trials_of(cells: list[dict], ids: list[str], packed: bool, pack: int | None) -> list[tuple[list[dict], list[str]]]:
    """The mode's trials in running order: packs (sweeps.planner.pack_cells, at most
    `pack` cells, else whole groups), or one cell each, alternating between groups
    (training-set sizes) so that a budget cut leaves both sizes measured."""
    from sweeps.planner import pack_cells

    packs = pack_cells(cells, ids, pack or len(cells))
    if packed:
        return [(p["cells"], p["ids"]) for p in packs]
    groups = [list(zip(p["cells"], p["ids"])) for p in packs]
    order = [m for i in range(max(map(len, groups))) for g in groups if i < len(g) for m in [g[i]]]
    return [([c], [i]) for c, i in order]


def trial_estimate(trial: dict, epochs: int) -> float:
    """Seconds the trial would take for `epochs` epochs: its set-up, its first epoch,
    and its later epochs' mean for the rest (time_s: the engine's cumulative seconds)."""
    times = [r["time_s"] for r in max(trial["rows"].values(), key=len)]
    if not times:
        return trial["wall_s"]
    setup = trial["wall_s"] - times[-1]
    later = [b - a for a, b in zip(times, times[1:])]
    per_epoch = sum(later) / len(later) if later else times[0]
    return setup + times[0] + per_epoch * (epochs - 1)


def cell_images(cell: dict, test_count: int) -> int:
    """Images one epoch of a cell processes (a training pass and its evaluation of the
    training and test splits), to scale a partial measurement."""
    return 2 * cell["train_size"] + min(cell.get("test_size") or test_count, test_count)


def run_mode(name: str, cells: list[dict], ids: list[str], data: dict, device, budget_s: float, pack: int | None,
             flops: tuple[float, float], spec_epochs: int, out: Path) -> dict:
    import torch

    packed, options = MODES[name]
    if device.type != "cuda":  # cuda_eval_batch_size does nothing elsewhere
        options = {k: v for k, v in options.items() if k != "cuda_eval_batch_size"}
    cells = [{**c, **options} for c in cells]
    trials = trials_of(cells, ids, packed, pack)
    warm_cells = [{**c, **WARMUP} for c in trials[0][0][:2]]
    started = time.perf_counter()
    run_trial(warm_cells, trials[0][1][:2], packed, data, device, float("inf"))
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done: list[dict] = []
    deadline = time.perf_counter() + budget_s
    with gpu_tools.GpuSampler(out / f"gpu-{name}.csv", enabled=device.type == "cuda") as sampler:
        started = time.perf_counter()
        for trial_cells, trial_ids in trials:
            if time.perf_counter() > deadline:
                break
            done.append(run_trial(trial_cells, trial_ids, packed, data, device, deadline))
        wall = time.perf_counter() - started
    by_id = dict(zip(ids, cells))
    test_count = len(next(iter(data.values())).test_y)
    train_per_image, eval_per_image = flops
    total_flops = 0.0
    for trial in done:
        for cid, rows in trial["rows"].items():
            cell, epochs = by_id[cid], len(rows)
            evaluated = cell["train_size"] + min(cell.get("test_size") or test_count, test_count)
            total_flops += epochs * (cell["train_size"] * train_per_image + evaluated * eval_per_image)
    ran = [cid for t in done for cid in t["ids"]]
    done_images = sum(cell_images(by_id[c], test_count) for c in ran)
    all_images = sum(cell_images(c, test_count) for c in cells)
    estimate = sum(trial_estimate(t, spec_epochs) for t in done) * all_images / done_images if done else None
    return {
        "packed": packed, "options": options, "trials": len(done), "trials_planned": len(trials),
        "pack_sizes": sorted({len(t[1]) for t in trials}), "cells_run": len(ran), "cells": len(cells),
        "cell_epochs": sum(len(r) for t in done for r in t["rows"].values()),
        "truncated": len(done) < len(trials) or any(t["truncated"] for t in done),
        "warmup_s": round(warmup_s, 2), "wall_s": round(wall, 2), "flops": total_flops,
        "tflop_per_s": total_flops / wall / 1e12 if wall > 0 else None,
        "gpu": sampler.summary(),
        "torch_peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "study_estimate_s": round(estimate, 1) if estimate is not None else None,
        "trial_results": done,
    }


def agreement(modes: dict) -> dict:
    """Per mode, against `unpacked`: over the cells both finished at the same epoch, the
    largest |test_acc difference| and |train_loss difference| / train_loss."""
    base = modes.get("unpacked")
    if not base or "trial_results" not in base:
        return {}
    final = lambda mode: {cid: rows[-1] for t in mode["trial_results"] for cid, rows in t["rows"].items() if rows}
    reference, out = final(base), {}
    for name, mode in modes.items():
        if name == "unpacked" or "trial_results" not in mode:
            continue
        pairs = [(reference[c], r) for c, r in final(mode).items() if c in reference and reference[c]["epoch"] == r["epoch"]]
        if pairs:
            out[name] = {"cells": len(pairs),
                         "max_abs_test_acc": max(abs(a["test_acc"] - b["test_acc"]) for a, b in pairs),
                         "max_rel_train_loss": max(abs(a["train_loss"] - b["train_loss"]) / abs(a["train_loss"])
                                                   for a, b in pairs)}
    return out


def load_cells(slice_name: str, cells: int | None, epochs: int | None) -> tuple[object, list[dict], list[str], int]:
    """(the study, its cells for the slice, their ids, the spec's epochs)."""
    from sweeps.schema import cell_id, load_study

    profile, slice_epochs = SLICES[slice_name]
    study = load_study(SPEC, profile)
    chosen = study.cells[:cells] if cells else list(study.cells)
    spec_epochs = chosen[0]["epochs"]
    epochs = epochs or slice_epochs
    if epochs:
        chosen = [{**c, "epochs": epochs} for c in chosen]
    return study, chosen, [cell_id(study.spec.family, c) for c in chosen], spec_epochs


def print_table(result: dict) -> None:
    header = ("mode", "trials", "cells", "cell-epochs", "wall_s", "TFLOP/s", "GPU util mean/max %", "peak MiB",
              "study_est_s", "vs unpacked: test_acc / train_loss")
    rows = [header]
    for name, m in result["modes"].items():
        if "error" in m:
            rows.append((name, "error", m["error"][:60], "", "", "", "", "", "", ""))
            continue
        gpu = next(iter((m["gpu"] or {}).values()), None)
        agree = result["agreement"].get(name)
        rows.append((name, f"{m['trials']}/{m['trials_planned']}", f"{m['cells_run']}/{m['cells']}",
                     str(m["cell_epochs"]), f"{m['wall_s']:.1f}" + (" (cut)" if m["truncated"] else ""),
                     f"{m['tflop_per_s']:.2f}" if m["tflop_per_s"] is not None else "-",
                     f"{gpu['util_mean_pct']:.0f}/{gpu['util_max_pct']:.0f}" if gpu else "-",
                     str(m["torch_peak_memory_mib"] or "-"), str(m["study_estimate_s"]),
                     f"{agree['max_abs_test_acc']:.4f} / {agree['max_rel_train_loss']:.2e}" if agree else "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for wd.json and the nvidia-smi samples")
    parser.add_argument("--slice", choices=list(SLICES), default="check", help="which cells and epochs (default check)")
    parser.add_argument("--cells", type=int, help="only the slice's first N cells (grid order)")
    parser.add_argument("--epochs", type=int, help="epochs per cell instead of the slice's")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"seconds per mode (default {BUDGET_S:g})")
    parser.add_argument("--pack", type=int, help="cells per packed trial at most (default: each group whole)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ray_version = gpu_tools.ray_version()
    import torch

    from trainables import classifier

    device = gpu_tools.chosen_device(args.device, "training")
    if device is None:
        return 2
    study, cells, ids, spec_epochs = load_cells(args.slice, args.cells, args.epochs)
    threads = max(1, int(study.spec.resources.cpu))
    torch.set_num_threads(threads)  # as a trial with the spec's `resources: {cpu: N}`
    data = classifier.load_data(cells)
    cfg, model_args = classifier.parse_config(classifier.ClassifierConfig, cells[0])
    info = classifier.dataset_info(cfg.dataset)
    flops = gpu_tools.image_flops(classifier.build_for(info, cfg, model_args), info.input_shape, info.num_classes)
    print(f"{len(cells)} cells of {SPEC.name} (slice {args.slice}), {cells[0]['epochs']} epochs, {cfg.model} "
          f"{model_args}, on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{threads} torch thread(s); Ray: {ray_version}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    modes: dict[str, dict] = {}
    result = {"command": "python -m bench.gpu_wd " + " ".join(argv if argv is not None else sys.argv[1:]),
              "versions": gpu_tools.versions(), "ray": ray_version, "device": str(device), "torch_threads": threads,
              "slice": {"name": args.slice, "spec": str(SPEC.relative_to(REPO)), "profile": SLICES[args.slice][0],
                        "cells": len(cells), "epochs": cells[0]["epochs"], "spec_epochs": spec_epochs,
                        "train_sizes": sorted({c["train_size"] for c in cells}), "test_size": cells[0].get("test_size"),
                        "model": cfg.model, "model_args": model_args},
              "flops_per_image": {"train_step": flops[0], "eval": flops[1]},
              "budget_s": args.budget_s, "modes": modes, "agreement": {}}
    for name in args.modes:
        print(f"mode {name} ...", flush=True)
        try:
            modes[name] = run_mode(name, cells, ids, data, device, args.budget_s, args.pack, flops, spec_epochs, args.out)
            print(f"mode {name}: {modes[name]['cell_epochs']} cell-epochs in {modes[name]['wall_s']:.1f} s", flush=True)
        except Exception as exc:  # one mode's failure (e.g. out of memory) leaves the others measured
            traceback.print_exc()
            modes[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result["agreement"] = agreement(modes)
        # after every mode: a run stopped from outside keeps the modes it finished
        (args.out / "wd.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    print(f"results: {args.out / 'wd.json'}")
    return 1 if any("error" in m for m in modes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
