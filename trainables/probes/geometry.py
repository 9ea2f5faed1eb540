"""Loss-geometry probes: input sensitivity and sharpness of the trained model.

Ask for them in a spec (`sweeps/batch_size.yaml` does):

    fixed: {probes: [sensitivity, sharpness], probe_size: 1000}

The engine runs them once, with the last evaluation, in eval mode (dropout off).

- `sensitivity`: mean over the first `probe_size` test images (a fixed, class-balanced
  set) of ||d loss_i / d x_i||_F, the Frobenius norm of the gradient of the image's
  own cross-entropy with respect to its NORMALIZED input (what the model sees,
  `Split.inputs`: (pixel/255 - mean) / std). Per [0, 1] pixel units it would be
  this divided by the dataset's std (0.3081 for MNIST).
- `sharpness`: the top eigenvalue of the Hessian of the mean cross-entropy with
  respect to all parameters, on a fixed training batch (the first `probe_size`
  images of the training subset: a balanced prefix, the same in every trial with
  the same data_seed), by power iteration with Hessian-vector products (double
  backward). Power iteration converges to the eigenvalue of largest magnitude; near
  a minimum the negative eigenvalues are small, so that is the top one.
  `sharpness_iters` says how many iterations it took (== _POWER_MAX_ITERS: not
  converged to the tolerance).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from trainables.data import Split
from trainables.probes import first_rows, register_probe

# Power iteration: relative change of the eigenvalue estimate below which it stops
# (1e-3: three significant digits, well inside the spread between seeds), and the
# iteration cap (50 Hessian-vector products, about 100 forward/backward passes over
# the probe batch; the top eigenvalue of a trained net usually converges in 10-30).
_POWER_TOL = 1e-3
_POWER_MAX_ITERS = 50
_POWER_SEED = 0  # the start vector: the same in every trial, so runs are comparable


def _chunks(split: Split, batch_size: int):
    for start in range(0, len(split), batch_size):
        rows = split.idx[start : start + batch_size]
        yield split.inputs(rows), split.labels(rows)


@register_probe("sensitivity")
def sensitivity(model: nn.Module, train: Split, test: Split, cfg) -> dict:
    """Mean over `probe_size` test images of ||d CE(f(x_i), y_i) / d x_i||_F, with x_i
    the normalized input."""
    probe = first_rows(test, cfg.probe_size)
    model.eval()
    total = 0.0
    with torch.enable_grad():
        for x, y in _chunks(probe, cfg.eval_batch_size):
            x.requires_grad_(True)
            # reduction="sum": each image's input gradient is that of its own loss
            loss = F.cross_entropy(model(x), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            total += float(grad.flatten(1).norm(dim=1).sum())
    return {"sensitivity": total / len(probe)}


def top_eigenvalue(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                   max_iters: int = _POWER_MAX_ITERS, tol: float = _POWER_TOL) -> tuple[float, int]:
    """(eigenvalue of largest magnitude, iterations) of the symmetric linear map
    `matvec` by power iteration from `start` (a flat vector). The estimate is the
    Rayleigh quotient v.Av; it stops when that changes by less than `tol` relative."""
    v = start / start.norm()
    estimate = float("nan")
    for i in range(1, max_iters + 1):
        av = matvec(v)
        new = float(torch.dot(v, av))
        norm = av.norm()
        if norm == 0:  # v is in the null space: the map is zero along it
            return 0.0, i
        v = av / norm
        if abs(new - estimate) <= tol * abs(new):
            return new, i
        estimate = new
    return estimate, max_iters


def hessian_vector_product(model: nn.Module, batch: Split, batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> H v, H the Hessian of the mean cross-entropy over `batch` with respect to
    the model's trainable parameters (flattened in `model.parameters()` order).
    Summed over chunks of `batch_size` images, so memory stays bounded."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = len(batch)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(v, [p.numel() for p in params])
        vs = [piece.view_as(p) for piece, p in zip(pieces, params)]
        out = torch.zeros_like(v)
        with torch.enable_grad():
            for x, y in _chunks(batch, batch_size):
                loss = F.cross_entropy(model(x), y, reduction="sum") / n
                grads = torch.autograd.grad(loss, params, create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, vs))
                hv = torch.autograd.grad(dot, params)
                out += torch.cat([h.reshape(-1) for h in hv])
        return out

    return hvp


@register_probe("sharpness")
def sharpness(model: nn.Module, train: Split, test: Split, cfg) -> dict:
    """Top Hessian eigenvalue of the training loss on the first `probe_size`
    training images, by power iteration."""
    batch = first_rows(train, cfg.probe_size)
    model.eval()
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start = torch.randn(dim, generator=torch.Generator().manual_seed(_POWER_SEED)).to(train.x.device)
    value, iters = top_eigenvalue(hessian_vector_product(model, batch, cfg.eval_batch_size), start)
    return {"sharpness": value, "sharpness_iters": iters}
