"""Layer widths for a target parameter count.

Equal-parameter comparisons (deep-and-narrow vs one wide layer; shallow vs deep CNN)
need architectures whose sizes differ only in shape. Give a shape as relative widths
and a function that counts the parameters of the network built from concrete widths;
`fit_widths` scales the shape until the count is as close to the target as integer
widths allow.

    >>> widths = fit_widths(lambda w: mlp_param_count(1, w, 1), [1, 2, 2, 2, 1], 300)
    >>> widths, mlp_param_count(1, widths, 1)
"""

from __future__ import annotations

from typing import Callable, Sequence


def mlp_param_count(n_in: int, hidden: Sequence[int], n_out: int) -> int:
    """Weights plus biases of a fully connected network n_in -> hidden... -> n_out."""
    sizes = [n_in, *hidden, n_out]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def scaled(shape: Sequence[float], scale: float) -> list[int]:
    """Each relative width times `scale`, rounded, at least 1."""
    return [max(1, round(s * scale)) for s in shape]


def fit_widths(count: Callable[[list[int]], int], shape: Sequence[float], target: int,
               max_scale: float = 1e5) -> list[int]:
    """The widths `scaled(shape, s)` whose parameter count is closest to `target`.

    `count` must grow with the widths. Bisection on the scale finds where the count
    crosses the target; the rounded widths on either side of the crossing are both
    candidates, and so are single-unit adjustments of each layer there (rounding a
    common scale alone can miss a close target by a whole layer's worth)."""
    if target <= 0:
        raise ValueError(f"target parameter count must be positive, got {target}")
    if not shape or min(shape) <= 0:
        raise ValueError(f"relative widths must be positive, got {list(shape)}")
    lo, hi = 0.0, 1.0
    while count(scaled(shape, hi)) < target:
        lo, hi = hi, hi * 2
        if hi > max_scale:
            raise ValueError(f"no widths up to scale {max_scale:g} reach {target} parameters")
    for _ in range(60):
        mid = (lo + hi) / 2
        if count(scaled(shape, mid)) < target:
            lo = mid
        else:
            hi = mid
    candidates = {tuple(scaled(shape, lo)), tuple(scaled(shape, hi))}
    for base in list(candidates):
        for i in range(len(base)):
            for step in (-1, 1):
                tweaked = list(base)
                tweaked[i] = max(1, tweaked[i] + step)
                candidates.add(tuple(tweaked))
    # Closest count first; among ties, the one nearest the intended shape.
    best = min(candidates, key=lambda w: (abs(count(list(w)) - target), _shape_error(w, shape)))
    return list(best)


def _shape_error(widths: Sequence[int], shape: Sequence[float]) -> float:
    scale = sum(widths) / sum(shape)
    return sum(abs(w - s * scale) for w, s in zip(widths, shape))


def relative_error(count: int, target: int) -> float:
    """|count - target| / target: how far a found architecture is from its target."""
    return abs(count - target) / target
