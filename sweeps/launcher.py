"""Spec -> `ray.tune.Tuner`: start or resume a study, then write its report.

    python -m sweeps run sweeps/wd.yaml --profile quick

Results go to `results/<study>/` (`<study>` = spec name, plus `-quick`/`-smoke`):
`study.json` (spec + provenance), `tune/` (Tune's experiment: trial results and
checkpoints), then `history.parquet`, `trials.parquet` and `report/`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from analysis.collect import STUDY_FILE, TUNE_DIR  # the study folder's layout, named once
from sweeps.packing import PACK_KEY, pack_cells, trial_size
from sweeps.provenance import provenance
from sweeps.workerenv import WORKER_ENV
from sweeps import storage
from sweeps.schema import Study, cell_id
from sweeps.specyaml import SpecError
from trainables.families import get_family

# Tune's new console output prints its own banners and tables regardless of
# `verbose`; the legacy path honours verbose=0, and our ProgressPrinter reports.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Keeping one checkpoint per trial forces an experiment snapshot per checkpoint, which
# is what makes resuming exact; the warning about that cost is noise at our scale.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

EXIT_TRIALS_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
# What makes two runs the same study; resources, figures and retries may change.
_IDENTITY_KEYS = ("family", "fixed", "grid", "search", "scheduler", "seeds")


def run_trial(config: dict, family: str, data) -> None:
    """The Tune trainable: the grid cell's resolved config, plus searched values.
    A cell carried over from an earlier experiment of the study names its last
    checkpoint in `_resume_from`, and continues from there."""
    from trainables import trial

    # One INFO line per checkpoint from Ray Train would flood the driver's console.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if PACK_KEY in config:  # several cells trained together (spec `pack:`)
        pack = config[PACK_KEY]
        trial.resume_from = pack.get(RESUME_KEY)
        get_family(family).train_packed(pack["cells"], pack["ids"], data)
        return
    cell = dict(config["cell"])
    trial.resume_from = cell.pop(RESUME_KEY, None)
    flat = {**cell, **{k: v for k, v in config.items() if k != "cell"}}
    get_family(family).train(flat, data)


RESUME_KEY = "_resume_from"  # bookkeeping, not identity: see schema.cell_id


def study_dir_for(study: Study, results: str | Path, fresh: bool) -> Path | str:
    """The study's folder under `results`: a local path, or a URI (cloud storage)."""
    if storage.is_uri(results):
        base: Path | str = storage.join(str(results), study.study_name)
        taken = storage.exists(base)
    else:
        base = Path(results).resolve() / study.study_name
        taken = base.exists()
    if fresh and taken:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return _beside(base, f"{study.study_name}-{stamp}")
    return base


def _beside(folder: Path | str, name: str) -> Path | str:
    return Path(folder).parent / name if isinstance(folder, Path) else storage.join(folder.rsplit("/", 1)[0], name)


def _identity(spec_dump: dict) -> dict:
    return {k: spec_dump.get(k) for k in _IDENTITY_KEYS}


def read_record(folder: Path | str) -> dict | None:
    """The study.json of a study folder (local or URI), or None when there is none."""
    if storage.is_uri(folder):
        record = storage.join(str(folder), STUDY_FILE)
        text = storage.read_text(record) if storage.exists(record) else None
    else:
        record = Path(folder) / STUDY_FILE
        text = record.read_text() if record.exists() else None
    if text is None:
        return None
    try:
        stored = json.loads(text)
        stored["spec"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"{record}: unreadable study record ({exc}); move the folder away or use --fresh") from None
    return stored


def write_record(folder: Path | str, payload: dict) -> None:
    text = json.dumps(payload, indent=2, default=str)
    if storage.is_uri(folder):
        storage.write_text(storage.join(str(folder), STUDY_FILE), text)
        return
    path = Path(folder) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")  # a crash never leaves half a record
    tmp.write_text(text)
    os.replace(tmp, path)


def check_study_dir(study: Study, folder: Path | str) -> dict | None:
    """The stored record when `folder` holds this study already (resume), else None;
    refuses a folder that holds a different spec's results, and one that cannot be
    written."""
    stored = read_record(folder)
    if stored is not None:
        mine = json.loads(study.spec.model_dump_json())
        # A grid study may grow or change (new cells become new trials, finished ones
        # are kept, figures show the current cells only); a search, another family or
        # a folder from before trial ids were stable may not.
        keys = _IDENTITY_KEYS if growable(stored) is False or study.spec.search else ("family", "search")
        if any(stored["spec"].get(k) != mine.get(k) for k in keys):
            changed = [k for k in keys if stored["spec"].get(k) != mine.get(k)]
            raise SpecError(
                f"{folder}: holds results of a different spec (differs in: {', '.join(changed)}); "
                f"use --fresh to start a new study beside it, or --results to put it elsewhere"
            )
    if not storage.is_uri(folder):
        probe = Path(folder)
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise SpecError(f"{probe}: not a folder; --results (or the spec's storage) names the folder that holds study folders")
        if not os.access(probe, os.W_OK):
            raise SpecError(f"{probe}: results folder is not writable")
    return stored


def growable(stored: dict | None) -> bool | None:
    """Whether a study folder's record lists its experiments and cell ids (and so can
    grow); None for a new folder."""
    return None if stored is None else "experiments" in stored


class Plan(NamedTuple):
    """What a run of a grid study does: resume an experiment, start a new one over
    the cells not finished yet, or nothing."""

    experiment: str | None  # name of the Tune experiment to run; None: every cell is done
    restore: bool  # resume that experiment exactly (Tuner.restore)
    cells: list[dict]  # cells of a new experiment (resumable ones carry RESUME_KEY)
    done: int  # cells finished earlier and kept


def plan_grid(study: Study, folder: Path, stored: dict | None) -> Plan:
    """Decide from the study folder which cells still need training.

    A cell is done when a trial with its id ended ok or diverged. If the unfinished
    cells are exactly the unfinished ones of the latest experiment, that experiment is
    resumed as it was; otherwise (grid grown, values changed) a new experiment
    `tune-N` trains them, each continuing from its last checkpoint if it has one."""
    from analysis.collect import collect_tables, experiment_dirs, trial_folders
    from ray import tune
    from trainables.checkpoint import last_checkpoint

    ids = study.cell_ids
    experiments = (stored or {}).get("experiments") or []
    if not experiments:
        return Plan(TUNE_DIR, False, study.cells, 0)
    trials = collect_tables(folder, ids).trials
    status = dict(zip(trials["trial_id"], trials["status"])) if len(trials) else {}
    done = {i for i in ids if status.get(i) in ("ok", "diverged")}
    todo = [(i, c) for i, c in zip(ids, study.cells) if i not in done]
    if not todo:
        return Plan(None, False, [], len(done))
    latest = experiments[-1]
    latest_path = Path(folder) / latest["name"]
    if {i for i in latest["cell_ids"] if i not in done} == {i for i, _ in todo} and tune.Tuner.can_restore(str(latest_path)):
        return Plan(latest["name"], True, [], len(done))
    folders = trial_folders(folder)
    cells = []
    for i, cell in todo:
        checkpoint = last_checkpoint(folders[i][-1]) if i in folders else None
        cells.append({**cell, RESUME_KEY: str(checkpoint.parent)} if checkpoint else cell)
    taken = {p.name for p in experiment_dirs(folder)} | {e["name"] for e in experiments}
    number = 2
    while f"{TUNE_DIR}-{number}" in taken:
        number += 1
    return Plan(f"{TUNE_DIR}-{number}", False, cells, len(done))


def varying_keys(study: Study) -> list[str]:
    keys = list(study.spec.grid)
    if study.spec.search:
        keys += list(study.spec.search.space)
    if len(study.spec.seeds) > 1:
        keys.append("seed")
    return keys


def packs_for(study: Study, cells: list[dict], folder: Path | str) -> list[dict]:
    """The packed trials (spec `pack:`) training `cells`. A pack whose exact members
    ran before as a pack (same folder name) continues from that folder's last
    checkpoint; otherwise its cells start over (a cell's own single-model checkpoint,
    from an unpacked run, does not fit a pack)."""
    from analysis.collect import trial_folders
    from trainables.checkpoint import last_checkpoint

    plain = [{k: v for k, v in cell.items() if k != RESUME_KEY} for cell in cells]
    packs = pack_cells(plain, [cell_id(study.spec.family, c) for c in plain], study.spec.pack)
    folders = {} if storage.is_uri(folder) or not Path(folder).exists() else trial_folders(Path(folder))
    for pack in packs:
        state = last_checkpoint(folders[pack["id"]][-1]) if pack["id"] in folders else None
        if state is not None:
            pack[RESUME_KEY] = str(state.parent)
    return packs


def _tune_space(study: Study, cells: list[dict], packs: list[dict] | None = None):
    from ray import tune

    if packs is not None:
        return {PACK_KEY: tune.grid_search(packs)}
    if study.spec.search is None:
        return {"cell": tune.grid_search(cells)}
    samplers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    space: dict = {"cell": study.cells[0]}
    for name, dist in study.spec.search.space.items():
        (kind, args), = dist.model_dump().items()
        space[name] = tune.choice(args) if kind == "choice" else samplers[kind](*args)
    return space


def metric_of(study: Study) -> str:
    if study.spec.search and study.spec.search.metric:
        return study.spec.search.metric
    return get_family(study.spec.family).default_metric


def _tune_trial_id(trial) -> str:
    return trial.trial_id


def _cell_trial_id(family: str, trial) -> str:
    if PACK_KEY in trial.config:
        return trial.config[PACK_KEY]["id"]
    return cell_id(family, trial.config["cell"])


def _tune_config(study: Study):
    from ray import tune

    spec = study.spec
    if spec.search:
        name = _tune_trial_id
    else:  # a grid trial's folder (and trial_id in the results) is its cell's stable id
        name = functools.partial(_cell_trial_id, spec.family)
    kwargs: dict = dict(
        num_samples=spec.search.num_samples if spec.search else 1,
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
    if spec.search:
        if spec.search.algo == "optuna":
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            optuna.logging.set_verbosity(optuna.logging.WARNING)

            kwargs["search_alg"] = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search.seed))
        else:
            from ray.tune.search.basic_variant import BasicVariantGenerator

            kwargs["search_alg"] = BasicVariantGenerator(random_state=spec.search.seed)
        kwargs["max_concurrent_trials"] = spec.search.max_concurrent
    if spec.scheduler:
        from ray.tune.schedulers import ASHAScheduler

        kwargs["scheduler"] = ASHAScheduler(
            time_attr="epoch", max_t=max(c["epochs"] for c in study.cells),
            grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor,
        )
    return tune.TuneConfig(**kwargs)


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    for key, value in WORKER_ENV.items():  # a local Ray's workers inherit the driver's environment
        os.environ.setdefault(key, value)
    # Trials' stdout is forwarded; Ray's own INFO chatter is not.
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", configure_logging=True)
    # After an interruption Tune lists every not-yet-started trial as "failed to fetch
    # metrics"; the report says what is missing in one line instead.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Tune's own "Resume experiment with: Tuner.restore(...)" after Ctrl-C is for API
    # users; the CLI's way is to run the same command again, which _finish says.
    logging.getLogger("ray.tune.tune").addFilter(lambda record: "Tuner.restore(" not in record.getMessage())


# `gpu: auto`: the GPU share of a trial by its model's parameter count. MNIST-sized
# batches keep activations small, so weights + Adam state (16 bytes/parameter) and the
# CUDA context (~0.3-0.5 GB per process) dominate: up to 1M parameters eight trials
# share a GPU, up to 10M four, up to 100M two, beyond that a whole GPU each.
AUTO_GPU_SHARES = ((1_000_000, 0.125), (10_000_000, 0.25), (100_000_000, 0.5))


def auto_gpu_share(n_params: int) -> float:
    return next((share for limit, share in AUTO_GPU_SHARES if n_params <= limit), 1.0)


def trial_resources(study: Study) -> dict:
    """{"cpu", "gpu"} per trial, `gpu: auto` resolved; refuses a GPU share larger
    than any node of the running cluster has (the trial could never start)."""
    import ray

    node_gpus = [node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    most = max(node_gpus, default=0.0)
    wanted = study.spec.resources.gpu
    if wanted == "auto":
        if most == 0:
            return {"cpu": study.spec.resources.cpu, "gpu": 0.0}
        count = get_family(study.spec.family).count_params
        models = min(study.spec.pack, len(study.cells))  # a packed trial holds this many
        share = auto_gpu_share(models * max(count(cell) for cell in study.cells)) if count else 1.0
        wanted = min(share, most)
    if wanted > most:
        where = "no node of this cluster has a GPU" if most == 0 else f"the largest node has {most:g}"
        raise SpecError(f"{study.source}: resources.gpu: {wanted:g} GPU per trial, but {where}; "
                        f"lower it (fractions share a GPU) or join a cluster with GPUs (--address)")
    return {"cpu": study.spec.resources.cpu, "gpu": float(wanted)}


class StudyOutcome(NamedTuple):
    folder: Path | str
    exit_code: int  # 0: every trial ended (ok or diverged); see EXIT_* for the others


def run_study(study: Study, results: str | Path, *, address: str | None = None, fresh: bool = False,
              progress_every: float = 20.0, callbacks: list | None = None) -> StudyOutcome:
    """Run (or resume) a study and write its report. Raises SpecError/UserError on bad input.

    `results` is the parent of study folders: a local (or shared) path or a storage
    URI. `callbacks` are extra Tune callbacks (tests watch scheduling with them)."""
    from ray import tune

    folder = study_dir_for(study, results, fresh)
    stored = check_study_dir(study, folder)
    family = get_family(study.spec.family)
    data_started = time.monotonic()
    data = family.load_data(study.cells)  # before Ray starts: a data error costs nothing
    data_seconds = time.monotonic() - data_started

    record = {"spec": json.loads(study.spec.model_dump_json()), "profile": study.profile,
              "study": study.study_name, "source": study.source, "n_cells": len(study.cells),
              "provenance": provenance()}
    if stored is not None:
        record["provenance"]["resumed"] = True
        record["spec_first_run"] = stored.get("spec_first_run") or stored.get("provenance")
    total = study.spec.search.num_samples if study.spec.search else len(study.cells)
    if study.spec.search or storage.is_uri(folder) or growable(stored) is False:
        # Searches (and folders in cloud storage) resume their one experiment as it was.
        tune_path = storage.join(folder, TUNE_DIR) if storage.is_uri(folder) else str(Path(folder) / TUNE_DIR)
        plan = Plan(TUNE_DIR, tune.Tuner.can_restore(tune_path), study.cells, 0)
    else:
        plan = plan_grid(study, Path(folder), stored)
        record["cell_ids"] = study.cell_ids
        record["experiments"] = list((stored or {}).get("experiments") or [])
        if plan.experiment and not plan.restore:
            record["experiments"].append({"name": plan.experiment,
                                          "cell_ids": [cell_id(study.spec.family, c) for c in plan.cells]})
    if plan.experiment is None:
        write_record(folder, record)
        print(f"{study.study_name}: all {len(study.cells)} trials are done; rebuilding the report", flush=True)
        return _finish(study, folder, None, total)
    _init_ray(address)
    resources = trial_resources(study)  # refuses a GPU share the cluster cannot give
    write_record(folder, record)
    packs = packs_for(study, plan.cells, folder) if study.spec.pack > 1 and not plan.restore else None
    each = f"{resources['cpu']:g} CPU" + (f" + {resources['gpu']:g} GPU" if resources["gpu"] else "") + " each"
    what = f"{study.study_name}: {total} trials, {each}"
    if packs is not None:
        what = f"{study.study_name}: {len(plan.cells)} trials packed into {len(packs)} (up to {study.spec.pack} models), {each}"

    trainable = tune.with_resources(tune.with_parameters(run_trial, family=study.spec.family, data=data), resources)
    printer = ProgressPrinterFactory(study, total if plan.restore or not plan.done else len(plan.cells),
                                     progress_every)
    run_config = tune.RunConfig(
        name=plan.experiment,
        storage_path=str(folder),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=study.spec.max_failures),
        # Files a trial writes in its working directory (e.g. weight snapshots) are
        # kept in its folder of the study, wherever the trial ran.
        sync_config=tune.SyncConfig(sync_artifacts=True),
        callbacks=[printer, *(callbacks or [])],
        verbose=0,
    )
    tune_path = storage.join(folder, plan.experiment) if storage.is_uri(folder) else str(Path(folder) / plan.experiment)
    if plan.restore:
        print(f"resuming {what} from {tune_path}", flush=True)
        tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # Restore brings back the pickled RunConfig, callbacks included: swap in a
        # fresh printer (its clock and counts belong to this run).
        tuner._local_tuner.get_run_config().callbacks = [printer, *(callbacks or [])]
    else:
        if plan.done:
            resumed = sum(RESUME_KEY in c for c in (packs or plan.cells))
            print(f"{study.study_name}: {plan.done} of {len(study.cells)} trials done and kept; training "
                  f"{len(plan.cells)} more{f' in {len(packs)} packs' if packs else ''} "
                  f"({resumed} {'packs' if packs else 'trials'} from their last checkpoint) -> {tune_path}", flush=True)
        else:
            print(f"starting {what} -> {folder} (data loaded in {data_seconds:.1f} s)", flush=True)
        tuner = tune.Tuner(trainable, param_space=_tune_space(study, plan.cells, packs),
                           tune_config=_tune_config(study), run_config=run_config)
    grid = tuner.fit()
    # Trials this run should end with: a search's samples; a grid's cells or packs (a
    # restored grid experiment lists all of its trials, so nothing to compare).
    expected = total if study.spec.search else 0 if plan.restore else len(packs if packs is not None else plan.cells)
    return _finish(study, folder, grid, expected)


def _finish(study: Study, folder: Path | str, grid, total: int) -> StudyOutcome:
    """Write the report; the exit code says whether every trial of this run ended."""
    from analysis.report import write_report

    with storage.local_copy(folder) as local:
        summary = write_report(local).replace(str(local), str(folder))  # name the real place, not the copy
        errored_cells = sum(trial_size(result.config) for result in grid if result.error) if grid is not None else 0
        left = _not_ended(local, errored_cells) if grid is not None else 0
    print(summary, flush=True)
    if grid is None:
        return StudyOutcome(folder, 0)
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if unfinished or len(grid) < total or left:
        print(f"{study.study_name} stopped with {max(left, total - grid.num_terminated - grid.num_errors)} "
              f"trial(s) unfinished; run the same command again to resume", flush=True)
        return StudyOutcome(folder, EXIT_INTERRUPTED)
    if grid.num_errors:
        print(f"{grid.num_errors} trial(s) failed after {study.spec.max_failures} retries; "
              f"see tune*/<trial>/error.txt", flush=True)
        return StudyOutcome(folder, EXIT_TRIALS_FAILED)
    return StudyOutcome(folder, 0)


def _not_ended(folder: Path, errors: int) -> int:
    """Trials of the study (its current cells, or a search's samples) that have not
    ended, read from the folder: after Ctrl-C Tune's ResultGrid lists every trial,
    even the unstarted ones, as TERMINATED. Ended: ok or diverged on disk, or failed
    out of retries in this run (`errors`)."""
    from analysis.collect import collect_tables, read_study

    record = read_study(folder)
    trials = collect_tables(folder, record.get("cell_ids")).trials
    expected = record["spec"]["search"]["num_samples"] if record["spec"].get("search") else record["n_cells"]
    ended = int(trials["status"].isin(["ok", "diverged"]).sum()) if len(trials) else 0
    return max(0, expected - ended - errors)


def ProgressPrinterFactory(study: Study, total: int, interval: float):
    from sweeps.progress import ProgressPrinter

    return ProgressPrinter(study.study_name, varying_keys(study), metric_of(study), total, interval)
