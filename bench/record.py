"""What a benchmark returns (`Figure`) and how it repeats a measurement (`repeat`).

    >>> times = repeat(lambda: one_epoch(), reps=5)      # one warm-up call, then 5 timed
    >>> Figure.of("engine_epoch_s", times, unit="s")     # value = median of the 5
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, TypeVar

T = TypeVar("T")


@dataclass
class Figure:
    """One measured number. `reps` are the individual repetitions (after warm-up);
    `value` is their median unless the benchmark says otherwise in `notes` (e.g. the
    worst trial for memory). `target` None: context only (absolute times, peaks)."""

    name: str
    value: float
    unit: str = ""
    target: float | None = None
    higher_is_better: bool = True
    reps: list[float] = field(default_factory=list)
    notes: str = ""

    @classmethod
    def of(cls, name: str, reps: list[float], **kwargs) -> "Figure":
        """A figure whose value is the median of its repetitions."""
        return cls(name=name, value=median(reps), reps=list(reps), **kwargs)

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when there is no target."""
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}{' ' + self.unit if self.unit else ''}"

    def to_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


def median(values: list[float]) -> float:
    if not values:
        raise ValueError("no repetitions to take the median of")
    return float(statistics.median(values))


def repeat(measure: Callable[[], T], reps: int, warmup: int = 1) -> list[T]:
    """Call `measure` `warmup` times and drop the results (first-call costs: lazy
    imports, allocator growth, page faults on the dataset, MKL's thread pool), then
    `reps` times and return those results in order."""
    if reps < 1:
        raise ValueError(f"reps must be at least 1 (got {reps})")
    for _ in range(warmup):
        measure()
    return [measure() for _ in range(reps)]

