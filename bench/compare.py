"""The engine's speed at two commits, measured side by side in one run.

    python -m bench.compare 30c10c4                 # that commit vs this working tree
    python -m bench.compare 30c10c4 --rounds 6 --quick

The development machines drift by 10-25% between runs of the same code (`make bench`'s
figures included), so a before/after claim needs samples taken alternately. Each
round runs one sample of each tree (which one goes first alternates), each in a
fresh process with that tree first on the import path: the bench's own
measurements, once each (an MLP and a CNN epoch of `engine.fit` and their
evaluations, the MLP's share of the matmul peak, in-process packed training at K =
1, 8, 32). It prints the medians and the ratio this/base for each. The base commit
is checked out into a temporary git worktree, removed afterwards; it must have the
bench's measurement functions (bench/datapath.py, flops.py, packing.py: issue 7 on).
Exit status: 0, or 2 for a revision git does not know.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# measure -> whether a larger value is better (for the verdict column)
HIGHER_IS_BETTER = {"mlp_train_s": False, "mlp_eval_s": False, "cnn_train_s": False, "cnn_eval_s": False,
                    "flops_percent_of_peak": True, "compute_k1_steps_per_s": True, "compute_k8_steps_per_s": True,
                    "compute_k32_steps_per_s": True}


def sample(quick: bool) -> dict[str, float]:
    """One sample of the tree this process imports `bench` from."""
    import torch

    from bench import datapath, flops, packing

    out: dict[str, float] = {}
    for name in ("mlp", "cnn"):
        config = datapath.case_config(name, quick)
        datapath.engine_epoch(config)  # warm-up
        epoch = datapath.engine_epoch(config)
        out[f"{name}_train_s"], out[f"{name}_eval_s"] = epoch.train_s, epoch.eval_s
    cfg, model_args = flops.parse_config(flops.ClassifierConfig, datapath.case_config("mlp", quick))
    images = len(flops.make_splits(flops.mnist(), cfg, torch.device("cpu"))["train"])
    side = flops.QUICK_PEAK_SIDE if quick else flops.PEAK_SIDE
    out["flops_percent_of_peak"] = (100 * flops.mlp_train_flops(images, model_args["hidden"])
                                    / out["mlp_train_s"] / flops.matmul_peak(side))
    rates = getattr(packing, "compute_rates", None) or packing._compute_rates  # its name before issue 12
    out.update({f"compute_k{k}_steps_per_s": values[0] for k, values in rates(1, quick).items()})
    return out


def _sample_in(tree: Path, quick: bool) -> dict[str, float]:
    """One `sample` in a fresh process whose `bench` and gensweep come from `tree`. The
    sampler is this file, loaded by path (an older tree has no bench/compare.py)."""
    code = ("import importlib.util, json, sys\n"
            f"sys.path.insert(0, {str(tree)!r})\n"
            f"spec = importlib.util.spec_from_file_location('gensweep_compare', {str(Path(__file__).resolve())!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            f"print('SAMPLE ' + json.dumps(module.sample({quick!r})))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("SAMPLE "):
            return json.loads(line.removeprefix("SAMPLE "))
    raise RuntimeError(f"a sample in {tree} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")


def compare(base: str, rounds: int, quick: bool) -> dict[str, dict[str, list[float]]]:
    """Samples of `base` and of this working tree, alternating, `rounds` of each."""
    with tempfile.TemporaryDirectory(prefix="gensweep-compare-") as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), base],
                       check=True, capture_output=True, text=True)
        try:
            samples: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
            for i in range(rounds):
                pair = (("base", worktree), ("this", REPO))
                for which, tree in pair if i % 2 == 0 else pair[::-1]:  # ABBA: no tree always goes first
                    for key, value in _sample_in(tree, quick).items():
                        samples[which].setdefault(key, []).append(value)
                    print(f"round {i + 1}/{rounds}: {which} sampled", flush=True)
            return samples
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True, text=True)


def table(samples: dict[str, dict[str, list[float]]], base: str) -> str:
    lines = [f"{'measure':26} {base[:12]:>12} {'this tree':>12} {'this/base':>9}  better?"]
    for key in samples["base"]:
        if key not in samples["this"]:
            continue
        before, after = statistics.median(samples["base"][key]), statistics.median(samples["this"][key])
        ratio = after / before
        better = (ratio >= 1) == HIGHER_IS_BETTER.get(key, True)
        lines.append(f"{key:26} {before:12.4g} {after:12.4g} {ratio:9.3f}  {'yes' if better else 'no'}")
    n = len(next(iter(samples["base"].values()), []))
    lines.append(f"medians of {n} samples each, taken alternately; time_s: lower is better")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[1])
    parser.add_argument("base", help="the commit to compare this working tree with (e.g. the previous one)")
    parser.add_argument("--rounds", type=int, default=6, help="samples of each tree (default 6)")
    parser.add_argument("--quick", action="store_true", help="the bench's tiny sizes: plumbing only")
    args = parser.parse_args(argv)
    known = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}"],
                           capture_output=True, text=True)
    if known.returncode != 0:
        print(f"error: {args.base}: not a commit of this repository", file=sys.stderr)
        return 2
    print(table(compare(args.base, args.rounds, args.quick), args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
