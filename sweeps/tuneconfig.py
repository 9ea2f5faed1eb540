"""A study as Ray Tune sees it: the trainable, the param space, the TuneConfig
(searcher, scheduler, trial names) and the RunConfig (storage, checkpoints,
retries, callbacks). Building these starts nothing; `sweeps.runner` runs them.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from sweeps.planner import Plan
from sweeps.schema import Study, cell_id
from trainables import plugins as user_plugins
from trainables.contract import CELL_KEY, PACK_KEY, TUNING_KEY, flat_config
from trainables.families import get_family

# Tune's new console output prints its own banners and tables regardless of
# `verbose`; the legacy path honours verbose=0, and our ProgressPrinter reports.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Keeping one checkpoint per trial forces an experiment snapshot per checkpoint, which
# is what makes resuming exact; the warning about that cost is noise at our scale.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def run_trial(config: dict, family: str, data, plugins: list | None = None) -> None:
    """The Tune trainable. A grid trial's config is {"cell": resolved config} (a tuned
    study's trial adds its nuisance values and TUNING_KEY), a packed trial's {"pack": {"cells", "ids", "id"}}; a
    cell carried over from an earlier experiment of the study names its last
    checkpoint under RESUME_KEY, which the family's `restored_state(config)` reads.
    `plugins` (trainables.plugins.Plugin, with their source text) are imported first:
    they may define the family, model or dataset this trial uses."""
    # One INFO line per checkpoint from Ray Train would flood the driver's console.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    user_plugins.activate(list(plugins or []))
    if PACK_KEY in config:  # several cells trained together (spec `pack:`)
        pack = config[PACK_KEY]
        get_family(family).train_packed(pack["cells"], pack["ids"], data)
        return
    get_family(family).train(flat_config(config), data)


def metric_of(study: Study) -> str:
    """The metric a search or scheduler optimizes and the progress lines show."""
    if study.spec.search and study.spec.search.metric:
        return study.spec.search.metric
    return get_family(study.spec.family).default_metric


def cell_trial_id(family: str, trial) -> str:
    """A trial's folder name (and trial_id in the results): its cell's content id, a
    pack's id, or the id a tuned study's searcher gave it (a content id too)."""
    if PACK_KEY in trial.config:
        return trial.config[PACK_KEY]["id"]
    if TUNING_KEY in trial.config:
        return trial.config[TUNING_KEY]["id"]
    return cell_id(family, trial.config[CELL_KEY])


def searcher_for(study: Study, cells: list[dict], folder: Path | str):
    """The tuned study's searcher over `cells` (tuning cells), each starting from its
    trials already in `folder`."""
    from sweeps.cellsearch import CellSearch, TuningCell
    from sweeps.planner import tuning_configs, tuning_priors

    ids = [cell_id(study.spec.family, cell) for cell in cells]
    configs = tuning_configs(study)
    priors = tuning_priors(study, folder, ids)
    return CellSearch(study.spec.family, [TuningCell(i, configs[i], priors[i]) for i in ids], study.spec.search,
                      study.spec.seeds)


def tune_config(study: Study, searcher=None, grid: list[dict] | None = None):
    """`searcher`: a tuned study's (searcher_for); for a grid, `grid` lists its trials
    (cells, or packs: `{"cells", "ids", "id"}`), which sweeps.gridorder proposes in
    order. The param space is empty either way: the searcher gives every trial's config."""
    import ray
    from ray import tune

    spec = study.spec
    name = functools.partial(cell_trial_id, spec.family)
    if searcher is None and grid is not None:
        from sweeps.gridorder import GridOrder

        packed = bool(grid) and "ids" in grid[0]
        searcher = GridOrder(PACK_KEY if packed else CELL_KEY, grid)
    kwargs: dict = dict(
        num_samples=searcher.planned() if searcher is not None else 1,
        trial_dirname_creator=name,
        trial_name_creator=name,
        # A trial runs in a worker process kept from an earlier trial of the study, not
        # a new one: a new process and its imports (torch, Tune, gensweep, and
        # torch._dynamo at the first optimizer) cost about 5 s per trial on 2 cores,
        # which took a 16-trial grid of 5 s trials from 1.15x to 1.99x of its
        # ideal wall time (bench/overhead.py).
        reuse_actors=True,
    )
    if spec.search or spec.scheduler:
        kwargs.update(metric=metric_of(study), mode=spec.search.mode if spec.search else "max")
    if searcher is not None:
        kwargs["search_alg"] = searcher
        # A grid: trials waiting for a CPU as Tune's grid_search keeps them (at least
        # 200, or 1.1 per CPU of the cluster), not the one at a time of a searcher.
        cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else 1
        kwargs["max_concurrent_trials"] = spec.search.max_concurrent if spec.search else max(200, int(cpus * 1.1))
    if spec.scheduler:
        asha = dict(time_attr="epoch", max_t=max(c["epochs"] for c in study.cells),
                    grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor)
        if spec.search:
            from sweeps.cellsearch import CellASHA

            kwargs["scheduler"] = CellASHA(metric_of(study), spec.search.mode, **asha)
        else:
            from ray.tune.schedulers import ASHAScheduler

            kwargs["scheduler"] = ASHAScheduler(**asha)
    return tune.TuneConfig(**kwargs)


def run_config(study: Study, folder: Path | str, plan: Plan, callbacks: list):
    """One checkpoint kept per trial (`num_to_keep=1`). Tune then snapshots the
    experiment, and copies the trials' result rows into the study folder, at every
    trial checkpoint: what makes a resume exact (rows and checkpoints agree) and lets
    `gensweep status` and the tests read progress as it happens. Its cost grows with
    trials x checkpoints (benchmark 8, bench/many.py; ray#11233)."""
    from ray import tune

    return tune.RunConfig(
        name=plan.experiment,
        storage_path=str(folder),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=study.spec.max_failures),
        # Files a trial writes in its working directory (e.g. weight snapshots) are
        # kept in its folder of the study, wherever the trial ran.
        sync_config=tune.SyncConfig(sync_artifacts=True),
        callbacks=callbacks,
        verbose=0,
    )


def trainable(study: Study, data, resources: dict):
    """The trainable with the study's data (put in Ray's object store once) and each
    trial's resources."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, family=study.spec.family, data=data,
                                                    plugins=list(study.plugins)), resources)

