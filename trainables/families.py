"""The family registry: an experiment family turns a trial config into data + model +
an engine call. Families register by name; the spec's `family:` picks one.

A family supplies three functions:
- `validate(config) -> config`: check one trial's config (raise `ConfigError` naming
  the key) and return it with every default filled in, so results carry every
  hyperparameter;
- `load_data(configs) -> data`: read what all trials need, once, in the driver;
- `train(config, data)`: run one trial inside Ray Tune (reports through `tune.report`).
Optionally `count_params` (GPU shares), `train_packed` (specs' `pack:`) and
`workload` (cost estimates: trainables/cost.py).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ValidationError

from trainables.errors import ConfigError
from trainables.registry import Registry


@dataclass(frozen=True)
class Family:
    name: str
    validate: Callable[[dict], dict]
    load_data: Callable[[list[dict]], Any]
    train: Callable[[dict, Any], None]
    # Metric a search or scheduler optimizes when the spec names none.
    default_metric: str = "test_acc"
    # Last-row metrics the report's table shows (mean ± std per cell); empty: the
    # output contract's accuracies, gap and weight norm.
    summary_metrics: tuple[str, ...] = ()
    # Parameters of the model a trial config builds; `resources: {gpu: auto}` sizes
    # the GPU share from it (None: a whole GPU per trial).
    count_params: Callable[[dict], int] | None = None
    # `train_packed(configs, ids, data)`: several configs (differing only in
    # trainables.packed.PER_MODEL_KEYS) trained together as one trial, reporting each
    # under its id; None: the family does not support `pack:` in specs.
    train_packed: Callable[[list[dict], list[str], Any], None] | None = None
    # `workload(configs)`: what a trial of these configs (one, or a pack) trains, as a
    # trainables.cost.Workload, for `gensweep estimate`; None: no cost model.
    workload: Callable[[list[dict]], Any] | None = None


FAMILIES: Registry[Family] = Registry("family")


def register_family(family: Family) -> Family:
    return FAMILIES.add(family.name, family)


# Modules whose import registers a family; add a new family's module here.
FAMILY_MODULES = ("trainables.classifier", "trainables.interpolation", "trainables.trajectory",
                  "trainables.function_fit", "trainables.numpy_mlp", "trainables.critical_points")


def get_family(name: str) -> Family:
    import importlib

    for module in FAMILY_MODULES:
        importlib.import_module(module)

    if name not in FAMILIES:
        raise ConfigError("family", f"unknown family {name!r}{suggest(name, FAMILIES)}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def suggest(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate_model(schema: type[BaseModel], values: dict) -> BaseModel:
    """Validate `values` against a pydantic model; the first problem becomes a
    ConfigError naming the key (pydantic's own message, made one line)."""
    for key, value in values.items():
        # pydantic's lax mode reads `true` as 1.0; a boolean where a number belongs
        # is a typo, not a value.
        field = schema.model_fields.get(key)
        if isinstance(value, bool) and field is not None and bool not in _types_of(field.annotation):
            raise ConfigError(key, f"expected {_describe(field.annotation)}, got a boolean ({value!r})")
    try:
        return schema(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "config"
        if err["type"] == "extra_forbidden":
            raise ConfigError(key, f"unknown key{suggest(key, schema.model_fields)}") from None
        message = err["msg"]
        if "input" in err and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
        raise ConfigError(key, message) from None


def _types_of(annotation) -> set:
    args = getattr(annotation, "__args__", None)
    if args is None or getattr(annotation, "__origin__", None) in (list, dict):
        return {getattr(annotation, "__origin__", annotation)}
    return set().union(*(_types_of(a) for a in args))


def _describe(annotation) -> str:
    names = sorted(getattr(t, "__name__", str(t)) for t in _types_of(annotation) if t is not type(None))
    return " or ".join(names) if names else "a value"
