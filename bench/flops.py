"""Benchmark 2: the engine's training FLOP/s for the 784-512-10 MLP as a fraction of
the machine's float32 matrix-multiply peak, measured in the same run.

FLOP count (per training image, multiply-add = 2 FLOPs), for each linear layer
in -> out: forward 2*in*out, weight gradient 2*in*out, and input gradient 2*in*out
for every layer but the first (autograd does not compute the gradient of the input
images, which do not require one). Bias additions and bias gradients, ReLU,
softmax/cross-entropy and the Adam update are O(batch*width) or O(params) and not
counted, as torch.utils.flop_counter.FlopCounterMode does not count them. For
784-512-10: 2*(784*512 + 512*10) * 2 + 2*512*10 = 1,636,352 FLOPs per image,
98.2 GFLOPs per 60k-image epoch.

Peak: the median rate of torch.mm on two large square float32 matrices with the same
torch thread count. The notes break a training epoch into its parts (forward +
backward, optimizer step, gather + normalize, gradient norm, the rest), each measured
by leaving it out of a loop that does what the engine's step does, to say what limits it.

    python -m bench --only flops
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from bench.datapath import case_config, engine_epoch, mnist
from bench.record import Figure, median, repeat
from trainables.classifier import ClassifierConfig, make_splits, parse_config
from trainables.engine import make_optimizer
from trainables.models import IMAGE_SIDE, NUM_CLASSES, build_model

PEAK_SIDE = 2048  # 17 GFLOPs per product: long enough to time, large enough to run at peak
QUICK_PEAK_SIDE = 512


def mlp_train_flops(images: int, hidden: list[int]) -> int:
    """Forward + backward matmul FLOPs of training an MLP (flattened 28x28 input,
    `hidden` layer widths, 10 outputs) on `images` images (see the module docstring)."""
    sizes = [IMAGE_SIDE * IMAGE_SIDE, *hidden, NUM_CLASSES]
    per_image = 0
    for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        passes = 2 if layer == 0 else 3  # forward, weight grad (+ input grad past the first layer)
        per_image += passes * 2 * fan_in * fan_out
    return per_image * images


def matmul_peak(side: int, calls: int = 7) -> float:
    """Median FLOP/s of torch.mm on two side x side float32 matrices (after a warm-up)."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    out = torch.empty(side, side)

    def one() -> float:
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        return time.perf_counter() - started

    return 2 * side**3 / median(repeat(one, calls))


# Versions of the engine's training step with parts left out (see step_breakdown).
VARIANTS = {"full": {}, "no_optimizer_step": {"step": False}, "no_grad_norm": {"norm": False},
            "pre_gathered": {"gather": False}, "forward_backward": {"gather": False, "norm": False, "step": False}}


def step_breakdown(config: dict, epochs: int = 3) -> dict[str, float]:
    """Seconds per epoch of a loop that does what trainables.engine.fit's training
    step does (gather + normalize the batch, forward, cross-entropy, backward, the
    gradient norm, the loss sum, the optimizer step), and of the same loop with parts
    left out (VARIANTS): a part's cost is what leaving it out saves, measured in the
    loop, where it competes with the others for caches (timing parts alone in tight
    loops flatters them). Medians of `epochs` interleaved epochs after a warm-up."""
    cfg, model_args = parse_config(ClassifierConfig, config)
    train = make_splits(mnist(), cfg, torch.device("cpu"))["train"]

    def epoch(gather: bool = True, norm: bool = True, step: bool = True) -> float:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, **model_args)
        optimizer = make_optimizer(model.parameters(), cfg)
        params = list(model.parameters())
        rows = list(torch.split(train.idx[torch.randperm(len(train))], cfg.batch_size))
        batches = None if gather else [(train.inputs(r), train.labels(r)) for r in rows]
        loss_sum = torch.zeros(())
        started = time.perf_counter()
        for i, r in enumerate(rows):
            images, labels = (train.inputs(r), train.labels(r)) if gather else batches[i]
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if norm:
                torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
            loss_sum += loss.detach()
            if step:
                optimizer.step()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for settings in VARIANTS.values():
        epoch(**settings)  # warm-up
    for _ in range(epochs):
        for name, settings in VARIANTS.items():
            times[name].append(epoch(**settings))
    return {name: median(t) for name, t in times.items()}


def run(reps: int, quick: bool) -> list[Figure]:
    config = case_config("mlp", quick)
    cfg, model_args = parse_config(ClassifierConfig, config)
    images = len(make_splits(mnist(), cfg, torch.device("cpu"))["train"])
    steps = -(-images // cfg.batch_size)
    flops = mlp_train_flops(images, model_args["hidden"])
    side = QUICK_PEAK_SIDE if quick else PEAK_SIDE

    def one() -> tuple[float, float]:
        peak = matmul_peak(side)
        return flops / engine_epoch(config).train_s, peak

    runs = repeat(one, reps)
    achieved, peak = median([a for a, _ in runs]), median([p for _, p in runs])
    loop = step_breakdown(config)
    epoch_s = flops / achieved  # the engine's median training epoch
    parts = {  # seconds per epoch
        "forward+backward": loop["forward_backward"],
        "optimizer step": loop["full"] - loop["no_optimizer_step"],
        "gather+normalize": loop["full"] - loop["pre_gathered"],
        "gradient norm": loop["full"] - loop["no_grad_norm"],
    }
    parts["rest of fit (epoch set-up, bookkeeping; what the parts miss)"] = epoch_s - sum(parts.values())
    limit = max(parts, key=parts.get)
    matmul_share = flops / loop["forward_backward"] / peak
    notes = (
        f"{flops / 1e9:.1f} GFLOP per epoch ({flops // images:,} per image, {steps} steps); "
        f"engine {achieved / 1e9:.0f} GFLOP/s, torch.mm {side}x{side} peak {peak / 1e9:.0f} GFLOP/s, "
        f"{torch.get_num_threads()} threads. Epoch {epoch_s:.3f} s = "
        + " + ".join(f"{part} {sec:.3f} s ({sec / epoch_s:.0%})" for part, sec in parts.items())
        + f" (each part: what leaving it out of the engine's step saves). Largest: {limit}. Forward+backward "
        f"alone runs at {matmul_share:.0%} of the large-matmul peak: the bound for the whole step with GEMMs "
        f"of this size (batch {cfg.batch_size}).")
    return [Figure.of("flops_percent_of_peak", [100 * a / p for a, p in runs], unit="%", target=40.0, notes=notes)]
