"""The sweep spec: what it may say, and its validation.

A spec names a family, the values it fixes, the grid axes it varies, an optional
search, the seeds, the resources and the figures; profiles (`quick`, `smoke`) are
partial overrides merged over it. Loading validates everything, including every
trial config the grid produces (through the family), refuses a seed, grid value or
cell listed twice (two cells are one trial when their content ids are equal), and
names the key path of the first problem:

    sweeps/wd.yaml: grid.weight_decay[2]: Input should be greater than or equal to 0 (got -0.001)
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Hashable, Iterable, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, model_validator

from sweeps.specyaml import SpecError, read_yaml
from trainables import plugins as user_plugins
from trainables.errors import ConfigError
from trainables.families import FAMILIES, get_family, suggest

# Every spec has `quick` and `smoke`; `cpu` (optional) is the full study less what
# only a GPU finishes in reasonable time (e.g. the CNN rows of models.yaml).
REQUIRED_PROFILES = ("quick", "smoke")
PROFILES = (*REQUIRED_PROFILES, "cpu")


def spec_value_key(value: Any) -> Hashable:
    """What a value written in a spec means, as a key that is equal for equal meanings:
    numbers compare as numbers (0 and 0.0, 1e-3 and 0.001 are one weight decay), lists
    and mappings by their items. A boolean is not a number here (Python's True == 1):
    where a family reads `0` as `false`, the cells' content ids still say they are one
    trial (_refuse_same_trials)."""
    if isinstance(value, (bool, str)) or value is None:
        return type(value).__name__, value
    if isinstance(value, (int, float)):
        return "number", value  # equal numbers hash alike: hash(0) == hash(0.0)
    if isinstance(value, (list, tuple)):
        return "list", tuple(spec_value_key(v) for v in value)
    if isinstance(value, dict):
        return "mapping", frozenset((spec_value_key(k), spec_value_key(v)) for k, v in value.items())
    return type(value).__name__, repr(value)  # YAML's dates and the like


def first_repeat(items: Iterable[tuple[int, Any]]) -> tuple[int, int] | None:
    """The positions (i, j), i < j, of the first value that repeats an earlier one
    (spec_value_key's sense of equal); None when every value is distinct."""
    seen: dict[Hashable, int] = {}
    for j, value in items:
        i = seen.setdefault(spec_value_key(value), j)
        if i != j:
            return i, j
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Uniform(_Strict):
    uniform: tuple[float, float]


class LogUniform(_Strict):
    loguniform: tuple[PositiveFloat, PositiveFloat]


class RandInt(_Strict):
    randint: tuple[int, int]  # low inclusive, high exclusive (Tune's convention)


class Choice(_Strict):
    choice: list[Any] = Field(min_length=1)


_DISTRIBUTIONS = {"uniform": "Uniform", "loguniform": "LogUniform", "randint": "RandInt", "choice": "Choice"}


def _distribution_tag(value: Any) -> str | None:
    """Pick the union member from the one key the user wrote, so errors talk about
    that distribution and not about every member pydantic tried."""
    if isinstance(value, dict) and len(value) == 1:
        return _DISTRIBUTIONS.get(next(iter(value)))
    return next((tag for cls, tag in zip(_DISTRIBUTIONS, _DISTRIBUTIONS.values()) if isinstance(value, globals()[tag])), None)


Distribution = Annotated[
    Union[Annotated[Uniform, Tag("Uniform")], Annotated[LogUniform, Tag("LogUniform")],
          Annotated[RandInt, Tag("RandInt")], Annotated[Choice, Tag("Choice")]],
    Discriminator(_distribution_tag),
]


def bounds(dist: Distribution) -> list:
    """The values a distribution can take at its edges (for validating configs)."""
    if isinstance(dist, Choice):
        return list(dist.choice)
    low, high = next(iter(dist.model_dump().values()))
    return [low, high - 1] if isinstance(dist, RandInt) else [low, high]


class Search(_Strict):
    """The nuisance values, searched again in every grid cell (trainables/tuning.py):
    each cell runs `num_samples` trials on the first seed, then its best values are
    re-run on every other seed."""

    # Optuna's samplers: TPE, scrambled Sobol (quasi-random, the tuning playbook's
    # exploration), random, and every combination of listed values (`choice`s).
    # "optuna" is TPE (the name older specs use).
    algo: Literal["tpe", "qmc", "random", "grid", "optuna"] = "tpe"
    space: dict[str, Distribution] = Field(min_length=1)
    num_samples: PositiveInt = 20  # search trials per grid cell
    metric: str | None = None  # a validation metric; default: the family's, as val_ (val_acc)
    mode: Literal["max", "min"] = "max"
    seed: NonNegativeInt = 0  # the samplers' seed (mixed with each cell's id): a rerun proposes the same trials
    max_concurrent: PositiveInt | None = None  # sequential model-based search learns more when low
    # Also run these nuisance values (e.g. {lr: 0.001}, a fixed-lr study's) on every
    # cell and seed, for comparison with the re-tuned results.
    baseline: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "Search":
        for name, dist in self.space.items():
            if not isinstance(dist, Choice):
                low, high = next(iter(dist.model_dump().values()))
                if low >= high:
                    raise ValueError(f"space.{name}: low {low} must be below high {high}: the range is empty")
            elif first_repeat(enumerate(dist.choice)) is not None:
                raise ValueError(f"space.{name}: choice lists a value twice")
        if self.algo == "grid":
            listed = [name for name, dist in self.space.items() if not isinstance(dist, Choice)]
            if listed:
                raise ValueError(f"space.{listed[0]}: algo: grid runs every combination of listed values; "
                                 f"give them as {{choice: [...]}} (got {next(iter(self.space[listed[0]].model_dump()))})")
            points = math.prod(len(d.choice) for d in self.space.values())
            if self.num_samples > points:
                raise ValueError(f"num_samples: {self.num_samples} is more than the {points} combinations "
                                 f"algo: grid can run; set num_samples: {points}")
        for name in self.baseline or {}:
            if name not in self.space:
                raise ValueError(f"baseline.{name}: not a searched key (search.space has {', '.join(self.space)})")
        return self

    def distributions(self) -> dict[str, dict]:
        """The space as the spec writes it: {"lr": {"loguniform": [0.0001, 0.1]}}."""
        return {name: dist.model_dump() for name, dist in self.space.items()}


class Scheduler(_Strict):
    type: Literal["asha"] = "asha"
    grace_period: PositiveInt = 1  # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(default=3.0, gt=1.0)  # keep the best 1/rf at each rung


class Resources(_Strict):
    cpu: PositiveFloat = 1.0  # per trial; torch uses this many threads
    # Per trial; fractions pack trials onto one GPU (0.25: four per GPU). "auto": a
    # share from the model's parameter count (runner.AUTO_GPU_SHARES), 0 without GPUs.
    gpu: NonNegativeFloat | Literal["auto"] = 0.0


class Figure(_Strict):
    """One standard figure. `curves`: y against epoch (or another history column
    `x`), a line per `hue`, a panel per `col`. `final`: the last evaluation's y
    against the hyperparameter `x`. Other kinds come from analysis/studies/."""

    kind: str
    y: list[str] = Field(default_factory=list)
    x: str | None = None
    hue: str | None = None
    col: str | None = None
    logx: bool | Literal[2] = False  # true: log10 axis; 2: log2 (batch sizes)
    logy: bool | Literal[2] = False
    title: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # kind-specific settings


class Spec(_Strict):
    """A grid axis is a list of values, or of mappings ("variants", e.g.
    `arch: [{name: linear, model: linear}, {name: mlp, model: mlp, hidden: [512]}]`)
    that set several keys at once and appear in the results as their names."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    family: str
    description: str = ""
    # Your own code: Python files (relative to the spec's folder) or module names,
    # imported before validation and in every trial (trainables/plugins.py). They run.
    plugins: list[str] = Field(default_factory=list)
    fixed: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: Search | None = None
    scheduler: Scheduler | None = None
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    max_failures: NonNegativeInt = 2  # restarts of a failed trial from its last checkpoint
    # Train up to this many grid cells per trial, vectorized (torch.func.vmap): cells
    # equal in all but seed, lr, weight_decay and momentum share a process and its data
    # (sweeps/packing.py, trainables/packed.py). Results are one row per cell either way.
    pack: PositiveInt = 1
    # Parent of the study folder: a path every node can write (shared filesystem on a
    # multi-node cluster) or a URI (s3://bucket/path, gs://...). Unset: results/.
    storage: str | None = None
    figures: list[Figure] = Field(default_factory=list)
    profiles: dict[Literal["quick", "smoke", "cpu"], dict[str, Any]] = Field(default_factory=dict)


class Study(BaseModel):
    """A validated spec with one profile applied, and the trial configs it makes."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: Spec
    profile: str | None
    source: str  # the spec file
    cells: list[dict]  # resolved config of every grid cell x seed (defaults filled in)
    plugins: list[user_plugins.Plugin] = Field(default_factory=list)  # read and imported

    @property
    def study_name(self) -> str:
        return f"{self.spec.name}-{self.profile}" if self.profile else self.spec.name

    @property
    def cell_ids(self) -> list[str]:
        return [cell_id(self.spec.family, cell) for cell in self.cells]

    @property
    def tuning_cells(self) -> list[dict]:
        """A tuned study's grid cells on the first seed, where each cell's search runs
        (`cells` lists each cell once per seed, seeds innermost)."""
        return self.cells[::len(self.spec.seeds)]

    @property
    def tuning_ids(self) -> list[str]:
        """The tuning cells' content ids: a grown grid keeps the searches of the cells it had."""
        return [cell_id(self.spec.family, cell) for cell in self.tuning_cells]


def cell_id(family: str, cell: dict) -> str:
    """A trial's stable identity: a hash of its family and resolved config (every
    hyperparameter, defaults filled in, seed and dataset included). The same cell in
    a grown or re-run spec has the same id; any changed value gives a new one. Keys
    starting with "_" are bookkeeping (e.g. where to resume from), not identity."""
    canonical = json.dumps({"family": family, **{k: v for k, v in cell.items() if not k.startswith("_")}},
                           sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _merge(base: dict, override: dict) -> dict:
    """Deep-merge a profile over the spec: dicts merge, other values replace, and
    `null` removes a key (e.g. drop a grid axis)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _pydantic_error(path: Path, exc: ValidationError, prefix: str = "") -> SpecError:
    err = exc.errors()[0]
    loc = prefix
    for part in err["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif part in ("Uniform", "LogUniform", "RandInt", "Choice") or "[" in str(part):
            continue  # union member names: not part of the user's key path
        else:
            loc += f".{part}" if loc else str(part)
    msg = err["msg"].removeprefix("Value error, ")
    inner = re.match(r"([A-Za-z_][\w.\[\]]*): (.*)", msg) if err["type"] == "value_error" else None
    if inner:  # a model validator's "space.lr: ..." continues the key path
        loc, msg = f"{loc}.{inner.group(1)}" if loc else inner.group(1), inner.group(2)
    if err["type"].startswith("union_tag"):
        msg = f"a distribution is one of {', '.join(f'{{{k}: ...}}' for k in _DISTRIBUTIONS)} (got {err['input']!r})"
    elif err["type"] == "extra_forbidden":
        parent = _schema_at(err["loc"][:-1])
        msg = f"unknown key{suggest(str(err['loc'][-1]), parent.model_fields if parent else [])}"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return SpecError(f"{path}: {loc or 'spec'}: {msg}")


def _schema_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model at a key path of the spec (for suggesting key names);
    list indices and dict keys step into the item type."""
    model: Any = Spec
    for part in loc:
        if isinstance(part, int) or part in _DISTRIBUTIONS.values():
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _inner_model(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside list[X], dict[str, X], X | None (or None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def load_study(path: str | Path, profile: str | None = None, pack: int | None = None) -> Study:
    """Read, merge the profile, and validate a spec file. Raises SpecError.
    `pack` overrides the spec's `pack` (the command line's --pack: packing pays on
    some machines, e.g. GPUs, and not on others)."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping of keys (name, family, fixed, grid, ...), got {type(raw).__name__}")
    if profile is not None:
        if profile not in PROFILES:
            raise SpecError(f"{path}: unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
        overrides = (raw.get("profiles") or {}).get(profile)
        if overrides is None:
            raise SpecError(f"{path}: profiles.{profile}: this spec has no {profile!r} profile")
        if not isinstance(overrides, dict):
            raise SpecError(f"{path}: profiles.{profile}: must be a mapping of spec keys")
        for key in overrides:
            if key in ("name", "family", "profiles") or key not in Spec.model_fields:
                raise SpecError(f"{path}: profiles.{profile}.{key}: a profile cannot set this key{suggest(key, Spec.model_fields)}")
        raw = _merge(raw, overrides)
    if pack is not None:
        raw = {**raw, "pack": pack}
    try:
        spec = Spec(**raw)
    except ValidationError as exc:
        raise _pydantic_error(path, exc) from None
    for axis, values in spec.grid.items():
        if not values:
            raise SpecError(f"{path}: grid.{axis}: empty list; give at least one value or remove the axis")
    _check_repeats(path, spec)
    plugins = load_plugins(path, spec)
    _check_nuisance_keys(path, spec)
    cells = _resolve_cells(path, spec)
    if spec.search is not None:
        spec = spec.model_copy(update={"search": spec.search.model_copy(
            update={"metric": _search_metric(path, spec, cells[0])})})
    _check_pack(path, spec)
    _check_figures(path, spec, cells)
    return Study(spec=spec, profile=profile, source=str(path), cells=cells, plugins=plugins)


def load_plugins(path: Path, spec: Spec) -> list[user_plugins.Plugin]:
    """Read and import the spec's plugins (they register models, datasets, ...
    that the rest of the spec may name). A problem is one line naming the spec key
    and the plugin's file and line."""
    found = []
    for i, entry in enumerate(spec.plugins):
        try:
            found += user_plugins.resolve([entry], path.parent)
        except user_plugins.PluginError as exc:
            raise SpecError(f"{path}: plugins[{i}]: {exc}") from None
    for i in range(len(found)):
        try:
            user_plugins.activate(found[: i + 1])
        except user_plugins.PluginError as exc:
            raise SpecError(f"{path}: plugins[{i}]: {exc}") from None
    user_plugins.activate(found)  # also when there are none: the provenance is this study's
    return found


def _check_nuisance_keys(path: Path, spec: Spec) -> None:
    """A hyperparameter is scientific (a grid axis, compared) or nuisance (searched
    again in every cell), not both."""
    if spec.search is None:
        return
    for name in spec.search.space:
        if name in spec.grid:
            raise SpecError(f"{path}: search.space.{name}: also a grid axis (grid.{name}); a hyperparameter is "
                            f"either scientific (grid: compared) or nuisance (search: re-tuned per cell), not both")
        for axis, values in spec.grid.items():
            for i, value in enumerate(values):
                if isinstance(value, dict) and name in value:
                    raise SpecError(f"{path}: search.space.{name}: also set by grid.{axis}[{i}].{name}; "
                                    f"a searched key cannot also be a grid value")


def _search_metric(path: Path, spec: Spec, cell: dict) -> str:
    """The search's metric: a validation metric, never a test one (choosing on the
    test set makes the reported test numbers optimistic)."""
    default = get_family(spec.family).default_metric
    metric = spec.search.metric or "val_" + default.split("_", 1)[-1]
    keys = ", ".join(spec.search.space)
    if metric.startswith("test_"):
        raise SpecError(f"{path}: search.metric: {metric} is a test metric; choosing {keys} by it would select on "
                        f"the test set and make the reported test results optimistic; use the validation metric "
                        f"val_{metric.removeprefix('test_')} (with fixed.val_size images held out)")
    if not metric.startswith("val_"):
        raise SpecError(f"{path}: search.metric: {metric} is not a validation metric; a search selects {keys} on "
                        f"held-out images: use val_{metric.split('_', 1)[-1]} (with fixed.val_size)")
    if "val_size" not in cell:
        raise SpecError(f"{path}: search.metric: family {spec.family!r} holds out no validation split, so it has "
                        f"no {metric} to search on")
    if not cell["val_size"]:
        raise SpecError(f"{path}: search.metric: {metric} needs a validation split; set fixed.val_size "
                        f"(training images held out for choosing {keys}, e.g. 5000)")
    return metric


def _resolve_cells(path: Path, spec: Spec) -> list[dict]:
    """Every grid cell x seed through the family's validation; errors name the spec
    key the bad value came from."""
    try:
        family = get_family(spec.family)
    except ConfigError as exc:
        raise SpecError(f"{path}: {exc}") from None
    for key in ("seed", *spec.grid, *(spec.search.space if spec.search else {})):
        if key in spec.fixed:
            raise SpecError(f"{path}: fixed.{key}: also set in {'seeds' if key == 'seed' else 'grid/search'}; set it in one place")
    searched = spec.search.space if spec.search else {}
    # Searched parameters are checked at both ends of their range.
    probes = list(itertools.product(*(bounds(d) for d in searched.values()))) or [()]
    axes = list(spec.grid)
    variant_axes = _variant_axes(path, spec)
    cells, origins = [], []
    for combo in itertools.product(*(range(len(spec.grid[a])) for a in axes)):
        chosen = dict(zip(axes, combo))
        config, labels, origin = dict(spec.fixed), {}, {}
        for axis, i in chosen.items():
            value = spec.grid[axis][i]
            if axis in variant_axes:
                labels[axis] = variant_axes[axis][i]
                config.update({k: v for k, v in value.items() if k != "name"})
                origin.update({k: f"grid.{axis}[{i}].{k}" for k in value})
            else:
                config[axis] = value
        for seed_index, seed in enumerate(spec.seeds):
            seeded = {**config, "seed": seed}
            for probe in probes:
                probed = {**seeded, **dict(zip(searched, probe))}
                try:
                    if "dataset" in probed:  # {npz: file} is relative to the spec's folder
                        probed["dataset"] = _dataset_ref(probed["dataset"], path.parent)
                    resolved = family.validate(probed)
                except ConfigError as exc:
                    top = re.split(r"[.\[]", exc.key)[0]
                    where = origin[top] + exc.key[len(top):] if top in origin else _where(exc.key, spec, chosen, seed_index)
                    raise SpecError(f"{path}: {where}: {exc.message}") from None
            # A variant axis becomes a column holding the variant's name.
            cells.append({**{k: v for k, v in resolved.items() if k not in searched}, **labels})
            origins.append((chosen, seed_index))
    _refuse_same_trials(path, spec, cells, origins, variant_axes)
    return cells


def _check_repeats(path: Path, spec: Spec) -> None:
    """A seed or grid value listed twice runs its trials twice, and the report would
    count them as independent evidence: refuse it, naming both positions."""
    _refuse_repeat(path, "seeds", enumerate(spec.seeds))
    for axis, values in spec.grid.items():
        if _is_variant_axis(values):
            # Variants are told apart by name in the results: a repeated name is the
            # clearer message, also when the whole variant repeats.
            named = [(i, str(v["name"])) for i, v in enumerate(values) if v.get("name")]
            _refuse_repeat(path, f"grid.{axis}", named, field=".name", rule="each variant needs its own name")
        _refuse_repeat(path, f"grid.{axis}", enumerate(values))


def _refuse_repeat(path: Path, key: str, items: Iterable[tuple[int, Any]], field: str = "",
                   rule: str = "each value once") -> None:
    """SpecError for the first value in (position, value) items that repeats an
    earlier one: `key[j]field: value repeats key[i]field (as written there); rule`."""
    items = list(items)
    pair = first_repeat(items)
    if pair is None:
        return
    values = dict(items)
    i, j = pair
    written = f" ({values[i]!r})" if repr(values[i]) != repr(values[j]) else ""  # 0.0 repeats 0
    raise SpecError(f"{path}: {key}[{j}]{field}: {values[j]!r} repeats {key}[{i}]{field}{written}; {rule}")


Origin = tuple[dict[str, int], int]  # a cell's grid positions (axis -> index) and seed index


def _refuse_same_trials(path: Path, spec: Spec, cells: list[dict], origins: list[Origin],
                        variant_axes: dict[str, list[str]]) -> None:
    """Distinct values can still resolve to one trial (a value the family reads like
    another, e.g. '0.01' and 0.01, or 0 and false): two cells with one content id
    would run once and be reported twice. Variants with different names are different
    cells even when they train the same config (a deliberate reference run)."""
    first: dict[str, int] = {}
    for j, cell in enumerate(cells):
        content_id = cell_id(spec.family, cell)
        i = first.setdefault(content_id, j)
        if i == j:
            continue
        (grid_i, _), (grid_j, seed_j) = origins[i], origins[j]
        # The key path: the later cell's first grid position that differs from the earlier one's.
        differs = next((f"grid.{a}[{grid_j[a]}]" for a in grid_j if grid_j[a] != grid_i[a]), f"seeds[{seed_j}]")
        raise SpecError(f"{path}: {differs}: the cell {_describe_origin(spec, origins[j], variant_axes)} is the same "
                        f"trial as the cell {_describe_origin(spec, origins[i], variant_axes)}: the family resolves "
                        f"both to one config (content id {content_id}); each cell once")


def _describe_origin(spec: Spec, origin: Origin, variant_axes: dict[str, list[str]]) -> str:
    """Where a cell comes from: {grid.wd[1] = 0.01, grid.arch[0] = variant 'mlp', seeds[0] = 0}."""
    grid, seed_index = origin
    parts = [f"grid.{axis}[{i}] = " + (f"variant {variant_axes[axis][i]!r}" if axis in variant_axes
                                       else repr(spec.grid[axis][i])) for axis, i in grid.items()]
    return "{" + ", ".join([*parts, f"seeds[{seed_index}] = {spec.seeds[seed_index]}"]) + "}"


def _dataset_ref(value: Any, base_dir: Path) -> str:
    from trainables import data

    try:
        return data.dataset_ref(value, base_dir)
    except (ValueError, data.DataError) as exc:
        raise ConfigError("dataset", str(exc)) from None


def _check_pack(path: Path, spec: Spec) -> None:
    if spec.pack == 1:
        return
    if spec.search is not None:
        raise SpecError(f"{path}: pack: a search proposes one trial at a time from the results so far; "
                        f"packing is for grids (remove pack, or turn the search into a grid)")
    if spec.scheduler is not None:
        raise SpecError(f"{path}: pack: the scheduler stops single trials early, and a packed trial trains "
                        f"several cells together; remove pack or the scheduler")
    if get_family(spec.family).train_packed is None:
        packable = sorted(name for name in FAMILIES if FAMILIES[name].train_packed is not None)
        raise SpecError(f"{path}: pack: family {spec.family!r} trains one model per trial; "
                        f"packing is available for: {', '.join(packable)}")


def _variant_axes(path: Path, spec: Spec) -> dict[str, list[str]]:
    """Grid axes whose values are mappings ("variants"): each value sets several
    config keys at once (e.g. a model and its arguments) and is named by its `name`
    key (or by its keys and values). Returns axis -> variant names."""
    variants = {}
    for axis, values in spec.grid.items():
        if _is_variant_axis(values):
            names = [str(v.get("name") or ",".join(f"{k}={v[k]}" for k in v)) for v in values]
            pair = first_repeat(enumerate(names))
            if pair is not None:  # written names and repeated variants are refused by _check_repeats
                i, j = pair
                raise SpecError(f"{path}: grid.{axis}[{j}]: name {names[j]!r} is also grid.{axis}[{i}]'s (a variant "
                                f"without `name:` is named by its keys and values); give each variant a `name:`")
            for i, value in enumerate(values):
                clash = [k for k in value if k in spec.fixed or k in spec.grid]
                if clash:
                    raise SpecError(f"{path}: grid.{axis}[{i}].{clash[0]}: also set in fixed or as a grid axis")
            variants[axis] = names
        elif any(isinstance(v, dict) for v in values):
            raise SpecError(f"{path}: grid.{axis}: mixes mappings (variants) and plain values")
    return variants


def _is_variant_axis(values: list) -> bool:
    return bool(values) and all(isinstance(v, dict) for v in values)


def _where(key: str, spec: Spec, combo: dict[str, int], seed_index: int) -> str:
    top = re.split(r"[.\[]", key)[0]
    rest = key[len(top):]  # e.g. "[0]" inside a list value
    if top in combo:
        return f"grid.{top}[{combo[top]}]{rest}"
    if top == "seed":
        return f"seeds[{seed_index}]"
    if spec.search and top in spec.search.space:
        return f"search.space.{top}"
    return f"fixed.{key}"


def _check_figures(path: Path, spec: Spec, cells: list[dict]) -> None:
    """The figures' columns name config keys. Whether each figure's kind exists and
    has what it needs is analysis' to say (analysis.report.check_figures, which the
    CLI calls after loading a spec: sweeps does not import analysis)."""
    known = set(cells[0]) | {"n_params", "epoch"} | (set(spec.search.space) if spec.search else set())
    for i, fig in enumerate(spec.figures):
        for role in ("x", "hue", "col"):
            column = getattr(fig, role)
            if role == "x" and fig.kind == "curves":
                continue  # a history column (epoch, step, alpha, ...), known only after running
            if column is not None and column not in known:
                raise SpecError(f"{path}: figures[{i}].{role}: {column!r} is not a config key{suggest(column, known)}")
