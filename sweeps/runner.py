"""Run (or resume) a study on Ray Tune: load its data, start or join Ray, size its
trials' resources, run the plan, and say how it ended.

    gensweep run sweeps/wd.yaml --profile quick      # the CLI: run_study + the report

Results go to `results/<study>/` (`<study>` = spec name, plus `-quick`/`-smoke`):
`study.json` (spec + provenance), `tune/` (Tune's experiment: trial results and
checkpoints), then what the report hook writes (`history.parquet`, `trials.parquet`,
`report/`; the CLI passes analysis' `write_report`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

from sweeps import studylock, tuneconfig
from sweeps.planner import (
    check_study_dir, packs_for, plugin_changes, plan_study, resumed, study_dir_for, tracks_cells, trial_size, varying_keys,
)
from sweeps.provenance import provenance
from sweeps.schema import Study, cell_id
from sweeps.specyaml import SpecError
from sweeps.workerenv import WORKER_ENV
from trainables import storage
from trainables.contract import ENDED, cell_statuses, expected_trials, read_record, require_record, write_record
from trainables.errors import UserError
from trainables.families import get_family
from trainables.tuning import study_progress

EXIT_TRIALS_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C

# Writes a study's tables and figures from a local study folder and returns a summary
# for the terminal (analysis.report.write_report; sweeps does not import analysis).
ReportWriter = Callable[[Path], str]


def init_ray(address: str | None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS, as in a submitted job), or start
    a local Ray in this process, listening on the loopback address only."""
    import ray

    if ray.is_initialized():
        return
    for key, value in WORKER_ENV.items():  # a local Ray's workers inherit the driver's environment
        os.environ.setdefault(key, value)
    if address is None and not os.environ.get("RAY_ADDRESS"):
        bind_loopback()
    # Trials' stdout is forwarded; Ray's own INFO chatter is not.
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", configure_logging=True)
    # After an interruption Tune lists every not-yet-started trial as "failed to fetch
    # metrics"; the report says what is missing in one line instead.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Tune's own "Resume experiment with: Tuner.restore(...)" after Ctrl-C is for API
    # users; the CLI's way is to run the same command again, which run_study says.
    logging.getLogger("ray.tune.tune").addFilter(lambda record: "Tuner.restore(" not in record.getMessage())
    # TensorBoard takes numbers only and warns, with the whole value, at every report
    # holding a list of strings (a critical_points row's per-step `phase`); result.json
    # keeps everything, so the warning says nothing a user can act on.
    logging.getLogger("ray.tune.logger.tensorboardx").setLevel(logging.ERROR)


def bind_loopback() -> None:
    """Make the local Ray this process starts listen on 127.0.0.1 only: its GCS,
    raylet, object manager, workers and agents bind to the node's IP address when
    that is 127.0.0.1, and to every interface otherwise. ray.init has no switch for
    it (`_node_ip_address="127.0.0.1"` is turned back into the machine's network
    address); Ray's node address is the loopback one when its "cluster" mode is off,
    as on macOS and Windows, which this sets (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
    read when Ray is imported, so the module's constant too). A laptop on a shared
    network then exposes nothing; joining a cluster (--address) and `cluster up`
    keep their own settings (tests/test_faults.py checks every listening socket)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


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


def largest_node_memory() -> int | None:
    """Bytes of memory of the cluster's largest live node (Ray's `memory` resource,
    which is the node's memory less its object store, plus the object store: what
    the node's processes share); None when Ray does not say."""
    import ray

    sizes = [node["Resources"].get("memory", 0) + node["Resources"].get("object_store_memory", 0)
             for node in ray.nodes() if node.get("Alive")]
    return int(max(sizes)) if sizes and max(sizes) > 0 else None


class StudyOutcome(NamedTuple):
    folder: Path | str
    exit_code: int  # 0: every trial ended (ok or diverged); see EXIT_* for the others


def run_study(study: Study, results: str | Path, *, address: str | None = None, fresh: bool = False,
              progress_every: float = 20.0, callbacks: list | None = None,
              report: ReportWriter | None = None, accept_plugin_change: bool = False) -> StudyOutcome:
    """Run (or resume) a study, then `report` it. Raises SpecError/UserError on bad input.

    `results` is the parent of study folders: a local (or shared) path or a storage
    URI. `callbacks` are extra Tune callbacks for a new experiment (tests watch
    scheduling with them); a resumed one keeps those it started with (see below).
    `report(local folder) -> summary`: writes the tables and figures (the CLI passes
    analysis.report.write_report); None: no report."""
    from sweeps import diskwatch  # imports Ray: here, so that `validate` does not

    folder = study_dir_for(study, results, fresh)
    what = f"gensweep run {study.source}" + (f" --profile {study.profile}" if study.profile else "")
    try:
        with studylock.hold(folder, what=what):  # one writer per study: a second run stops here, changing nothing
            return _run_held(study, folder, address=address, progress_every=progress_every, callbacks=callbacks,
                             report=report, accept_plugin_change=accept_plugin_change)
    except OSError as exc:
        if not diskwatch.is_disk_error(exc):
            raise
        raise disk_stopped(study, folder, diskwatch.disk_problem(folder) or diskwatch.describe(exc),
                           exc.filename) from None
    finally:
        diskwatch.forget(folder)


def _run_held(study: Study, folder: Path | str, *, address: str | None, progress_every: float,
              callbacks: list | None, report: ReportWriter | None, accept_plugin_change: bool) -> StudyOutcome:
    """run_study's work, with the study's lock held."""
    from ray import tune

    from sweeps import diskwatch

    stored = check_study_dir(study, folder)
    if (problem := diskwatch.probe(folder)) is not None:  # full or read-only before anything starts
        raise UserError(f"{folder}: {problem}; free some space (or make it writable) and run the same command again")
    changes = plugin_changes(study, folder, stored, accept_plugin_change)
    data_started = time.monotonic()
    data = get_family(study.spec.family).load_data(study.cells)  # before Ray starts: a data error costs nothing
    data_seconds = time.monotonic() - data_started

    record = {"spec": json.loads(study.spec.model_dump_json()), "profile": study.profile,
              "study": study.study_name, "source": study.source, "n_cells": len(study.cells),
              "provenance": provenance()}
    if study.plugins or changes:
        record["plugins"] = [p.record() for p in study.plugins]
        record["plugin_changes"] = changes
    if stored is not None:
        record["provenance"]["resumed"] = True
        record["spec_first_run"] = stored.get("spec_first_run") or stored.get("provenance")
    total = expected_trials(record)
    plan = plan_study(study, folder, stored, tune.Tuner.can_restore)
    if tracks_cells(study, folder, stored):
        record["cell_ids"] = study.tuning_ids if study.spec.search else study.cell_ids
        record["experiments"] = list((stored or {}).get("experiments") or [])
        if plan.experiment and not plan.restore:
            record["experiments"].append({"name": plan.experiment,
                                          "cell_ids": [cell_id(study.spec.family, c) for c in plan.cells]})
    if plan.experiment is None:
        write_record(folder, record)
        print(f"{study.study_name}: all {len(study.cells)} trials are done; rebuilding the report", flush=True)
        return _finish(study, folder, None, total, report)
    init_ray(address)
    resources = trial_resources(study)  # refuses a GPU share the cluster cannot give
    if address is not None or os.environ.get("RAY_ADDRESS"):  # a cluster's nodes, not this machine (checked at load)
        from sweeps.feasibility import check_memory

        check_memory(study, host_bytes=largest_node_memory(), machine="the cluster's largest node")
    write_record(folder, record)
    packs = packs_for(study, plan.cells, folder) if study.spec.pack > 1 and not plan.restore else None
    each = f"{resources['cpu']:g} CPU" + (f" + {resources['gpu']:g} GPU" if resources["gpu"] else "") + " each"
    what = f"{study.study_name}: {total} trials, {each}"
    if study.spec.search:
        what = f"{study.study_name}: {tuned_summary(study, total)}, {each}"
    if packs is not None:
        what = f"{study.study_name}: {len(plan.cells)} trials packed into {len(packs)} (up to {study.spec.pack} models), {each}"

    trainable = tuneconfig.trainable(study, data, resources)
    searcher = tuneconfig.searcher_for(study, plan.cells, folder) if study.spec.search and not plan.restore else None
    this_run = searcher.planned() if searcher is not None else len(plan.cells)
    printer = progress_printer(study, total if plan.restore or not plan.done else this_run, progress_every)
    watch = diskwatch.DiskWatch(folder)
    diskwatch.quiet_disk_errors()
    tune_path = storage.join(folder, plan.experiment) if storage.is_uri(folder) else str(Path(folder) / plan.experiment)
    if plan.restore:
        print(f"resuming {what} from {tune_path}", flush=True)
        # Tune restores the experiment's pickled RunConfig, callbacks included, and has
        # no public way to replace them (Tuner.restore takes no run_config): the
        # restored ProgressPrinter starts its clock and counts again in `setup`.
        tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if plan.done:
            if searcher is not None:
                print(f"{study.study_name}: {plan.done} of {len(study.tuning_cells)} grid cells done and kept; "
                      f"tuning {len(plan.cells)} more (up to {this_run} trials, each cell from its trials so far) "
                      f"-> {tune_path}", flush=True)
            else:
                print(f"{study.study_name}: {plan.done} of {len(study.cells)} trials done and kept; training "
                      f"{len(plan.cells)} more{f' in {len(packs)} packs' if packs else ''} "
                      f"({resumed(packs or plan.cells)} {'packs' if packs else 'trials'} from their last checkpoint) "
                      f"-> {tune_path}", flush=True)
        else:
            print(f"starting {what} -> {folder} (data loaded in {data_seconds:.1f} s)", flush=True)
        grid = None if study.spec.search else (packs if packs is not None else plan.cells)
        tuner = tune.Tuner(trainable, tune_config=tuneconfig.tune_config(study, searcher, grid),
                           run_config=tuneconfig.run_config(study, folder, plan, [printer, watch, *(callbacks or [])]))
    try:
        grid = tuner.fit()
    except Exception as exc:  # e.g. Tune reading the error files a full disk cut short
        if (problem := diskwatch.disk_problem(folder)) is None and not diskwatch.is_disk_error(exc):
            raise
        raise disk_stopped(study, folder, problem or diskwatch.describe(exc)) from None
    if (problem := diskwatch.disk_problem(folder)) is not None:
        raise disk_stopped(study, folder, problem)
    # Trials this run should end with: a grid's cells or packs (a restored experiment
    # lists all of its trials, and a tuned study's searcher decides as it goes, so
    # nothing to compare: `not_ended` reads what is left from the folder).
    expected = 0 if plan.restore or study.spec.search else len(packs if packs is not None else plan.cells)
    return _finish(study, folder, grid, expected, report)


def disk_stopped(study: Study, folder: Path | str, problem: str, path: str | None = None) -> UserError:
    """The one line a run ends with when its results folder filled up or became
    read-only: which path, why, what is kept, and what to do."""
    where = path if path and str(path).startswith(str(folder)) else folder
    kept = ""
    try:
        record = read_record(folder)
        if record is not None and not storage.is_uri(folder):
            statuses = cell_statuses(Path(folder), record.get("cell_ids"))
            kept = f"; {sum(s in ENDED for s in statuses.values())} of {expected_trials(record)} trials ended and are kept"
    except (OSError, ValueError):  # reading is best effort: the line matters more than the count
        pass
    return UserError(f"{where}: {problem}; the study stopped{kept}; free some space (or make the folder writable) "
                     f"and run the same command again to finish it")


def _finish(study: Study, folder: Path | str, grid, total: int, report: ReportWriter | None) -> StudyOutcome:
    """Write the report; the exit code says whether every trial of this run ended."""
    with storage.local_copy(folder) as local:
        if report is not None:
            print(report(local).replace(str(local), str(folder)), flush=True)  # name the real place, not the copy
        errored_cells = sum(trial_size(result.config) for result in grid if result.error) if grid is not None else 0
        left = not_ended(local, errored_cells) if grid is not None else 0
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


def not_ended(folder: Path, errors: int) -> int:
    """Trials of the study (its current cells, or a search's samples) that have not
    ended, read from the folder: after Ctrl-C Tune's ResultGrid lists every trial,
    even the unstarted ones, as TERMINATED. Ended: ok or diverged on disk, or failed
    out of retries in this run (`errors`)."""
    record = require_record(folder)
    if record["spec"].get("search") and "cell_ids" in record:
        left = sum(p.expected - p.ended for p in study_progress(folder, record).values())
        return max(0, left - errors)
    statuses = cell_statuses(folder, record.get("cell_ids"))
    ended = sum(s in ENDED for s in statuses.values())
    return max(0, expected_trials(record) - ended - errors)


def tuned_summary(study: Study, total: int) -> str:
    """A tuned study's shape in words, for its first line."""
    search, seeds = study.spec.search, study.spec.seeds
    text = (f"{len(study.tuning_cells)} grid cell(s), each its own {search.algo} search of {search.num_samples} "
            f"trials over {', '.join(search.space)} on seed {seeds[0]} ({search.metric}, {search.mode})")
    if len(seeds) > 1:
        text += f", then its best on {len(seeds) - 1} more seed(s)"
    if search.baseline:
        text += ", and baseline " + ", ".join(f"{k}={v}" for k, v in search.baseline.items()) + " on every seed"
    return f"{text}: up to {total} trials"


def progress_printer(study: Study, total: int, interval: float):
    from sweeps.progress import ProgressPrinter

    return ProgressPrinter(study.study_name, varying_keys(study), tuneconfig.metric_of(study), total, interval)
