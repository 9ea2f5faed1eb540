"""A tuned study in one Tune experiment: a Tune `Searcher` holding one Optuna study per
grid cell, and an ASHA scheduler per cell (the rules: trainables/tuning.py).

For each tuning cell (a grid cell on the first seed) `CellSearch` proposes
`num_samples` search trials from that cell's own seeded Optuna sampler, the cells
taking turns, so their searches run side by side on the cluster like any trials.
When a cell's last search trial ends it proposes the best values again on every other
seed (confirm trials), and the spec's baseline values on every seed. Tune saves the
searcher with the experiment (`save`/`restore`), so a resumed experiment goes on
with each cell's Optuna study where it was; a new experiment of the study (a grown
grid) starts each unfinished cell from its trials on disk (`Prior`), so a cell
never starts its search from scratch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import json
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweeps.planner import Prior
from sweeps.schema import Search, cell_id
from trainables.contract import CELL_KEY, RESUME_KEY, TUNING_KEY
from trainables.tuning import BASELINE, CONFIRM, SEARCH, Candidate, best_candidate, trials_per_cell

optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(search: Search) -> dict[str, BaseDistribution]:
    """The spec's search space as Optuna distributions."""
    out: dict[str, BaseDistribution] = {}
    for name, dist in search.space.items():
        (kind, args), = dist.model_dump().items()
        if kind == "choice":
            out[name] = CategoricalDistribution(list(args))
        elif kind == "randint":
            out[name] = IntDistribution(args[0], args[1] - 1)  # Tune's randint excludes its upper end
        else:
            out[name] = FloatDistribution(args[0], args[1], log=kind == "loguniform")
    return out


def cell_seed(search: Search, tuning_id: str) -> int:
    """A cell's sampler seed: the spec's seed mixed with the cell's content id, so each
    cell explores differently and the same cell proposes the same points in every run
    (also after the grid grew around it)."""
    return int(hashlib.sha256(f"{search.seed}:{tuning_id}".encode()).hexdigest()[:8], 16)


def sampler(search: Search, seed: int) -> optuna.samplers.BaseSampler:
    if search.algo in ("tpe", "optuna"):
        return optuna.samplers.TPESampler(seed=seed)
    if search.algo == "qmc":
        with warnings.catch_warnings():  # "QMCSampler is experimental"
            warnings.simplefilter("ignore")
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                              warn_independent_sampling=False)
    if search.algo == "grid":
        return _GridSampler({n: list(d.choice) for n, d in search.space.items()}, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its `study.stop()` once the grid is used up: that
    ends an Optuna `optimize` loop, and raises when told a result outside one (here
    Tune runs the trials, and the spec's num_samples is at most the grid's size)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


class TuningCell(NamedTuple):
    id: str  # the cell's content id on the first seed (Study.tuning_ids)
    configs: dict[int, dict]  # seed -> the cell's resolved config (nuisance keys left out)
    priors: list[Prior] = []


@dataclass
class _CellState:
    cell: TuningCell
    study: optuna.Study
    proposed: int = 0  # search samples proposed (their indices 0..proposed-1)
    ended: int = 0  # search trials ended (ok, diverged or failed)
    candidates: list = field(default_factory=list)
    params: dict = field(default_factory=dict)  # search trial id -> its nuisance values
    queue: list = field(default_factory=list)  # configs to propose before new samples
    best: Candidate | None = None
    finished_search: bool = False
    baselines_queued: bool = False
    # (role, seed, the search trial it repeats) of the confirm and baseline trials
    # that ended in an earlier experiment: never proposed again
    ended_runs: set = field(default_factory=set)


class CellSearch(Searcher):
    """One Optuna study per tuning cell, behind Tune's Searcher API (Ray 2.60:
    suggest / on_trial_complete / save / restore)."""

    def __init__(self, family: str, cells: list[TuningCell], search: Search, seeds: list[int]):
        super().__init__(metric=search.metric, mode=search.mode)
        self.family, self.search, self.seeds = family, search, list(seeds)
        self.space = distributions(search)
        self.cells: dict[str, _CellState] = {}
        self.live: dict[str, tuple[str, str, int | None, str]] = {}  # Tune trial id -> (cell, role, optuna number, trial id)
        for cell in cells:
            direction = "maximize" if search.mode == "max" else "minimize"
            state = _CellState(cell, optuna.create_study(direction=direction, sampler=sampler(search, cell_seed(search, cell.id))))
            self.cells[cell.id] = state
            self._warm_start(state)

    # ---- what a cell proposes -------------------------------------------------------

    def _config(self, state: _CellState, seed: int, params: dict, role: str, sample: int | None,
                of: str | None = None, resume: str | None = None) -> dict:
        cell = state.cell.configs[seed]
        trial_id = cell_id(self.family, {**cell, **params, TUNING_KEY: {"role": role, "sample": sample}})
        return {CELL_KEY: {**cell, **({RESUME_KEY: resume} if resume else {})}, **params,
                TUNING_KEY: {"cell": state.cell.id, "role": role, "sample": sample, "of": of, "id": trial_id}}

    def _warm_start(self, state: _CellState) -> None:
        """Load a cell's earlier trials: ended search trials into its Optuna study,
        unfinished ones (and unfinished confirm / baseline trials) to propose again."""
        for prior in sorted(state.cell.priors, key=lambda p: (p.role != SEARCH, p.sample or 0)):
            if prior.role == SEARCH:
                state.proposed = max(state.proposed, prior.sample + 1)
                if prior.ended:
                    state.study.add_trial(_frozen(prior, self.space))
                    state.ended += 1
                    state.candidates.append(prior.candidate)
                    state.params[prior.trial_id] = prior.params
                else:
                    state.queue.append(("again", prior))
            elif prior.ended:
                state.ended_runs.add((prior.role, prior.seed, prior.of))
            else:
                state.queue.append(("again", prior))
        self._after_search(state)

    def _after_search(self, state: _CellState) -> None:
        """Once every search trial of the cell ended: choose the best and queue its
        confirm trials (seeds after the first) and the baselines, leaving out those
        that ended or wait in the queue already."""
        if state.finished_search or state.ended < self.search.num_samples:
            return
        state.finished_search = True
        state.best = best_candidate(state.candidates, self.search.mode)
        queued = {(p.role, p.seed, p.of) for kind, p in state.queue if kind == "again"}
        taken = state.ended_runs | queued
        if state.best is not None:
            best = state.best.trial_id
            for seed in self.seeds[1:]:
                if (CONFIRM, seed, best) not in taken:
                    state.queue.append(("new", self._config(state, seed, state.params[best], CONFIRM, None, of=best)))
        elif state.candidates:
            logging.getLogger(__name__).warning(
                "cell %s: no search trial ran its whole budget with a finite %s; no confirm runs",
                state.cell.id, self.search.metric)
        if self.search.baseline and not state.baselines_queued:
            state.baselines_queued = True
            for seed in self.seeds:
                if (BASELINE, seed, None) not in taken:
                    state.queue.append(("new", self._config(state, seed, dict(self.search.baseline), BASELINE, None)))

    def planned(self) -> int:
        """Trials this searcher proposes when every cell's search finds a best (Tune's
        num_samples; a cell without a best proposes no confirm trials)."""
        per_cell = trials_per_cell(self.search.num_samples, len(self.seeds), bool(self.search.baseline))
        return max(sum(per_cell - state.ended - len(state.ended_runs) for state in self.cells.values()), 1)

    # ---- Tune's Searcher API ------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space comes from the spec, not from Tune's param_space

    def suggest(self, trial_id: str):
        for state in self.cells.values():
            if state.queue:
                return self._propose_queued(trial_id, state, state.queue.pop(0))
        open_cells = [s for s in self.cells.values() if s.proposed < self.search.num_samples]
        if open_cells:
            state = min(open_cells, key=lambda s: s.proposed)  # cells take turns: their searches run side by side
            ask = self._ask(state)
            config = self._config(state, self.seeds[0], dict(ask.params), SEARCH, state.proposed)
            state.proposed += 1
            return self._live(trial_id, state, SEARCH, ask.number, config)
        if all(s.finished_search for s in self.cells.values()):
            return Searcher.FINISHED
        return None  # waiting for searches to end before their confirm trials

    def _ask(self, state: _CellState) -> optuna.Trial:
        """The cell's next point. The sampler is seeded anew for each sample (from the
        cell's seed and the sample's index; QMC and grid keep the cell's seed: it fixes
        their sequence (scramble, grid order), indexed by the trials so far), so what it
        proposes depends on the cell's trials only, not on a random state: a study
        rebuilt from its trials (a restored or warm-started searcher) proposes what the
        original would have."""
        base = cell_seed(self.search, state.cell.id)
        seed = base if self.search.algo in ("qmc", "grid") else (base + state.proposed) % 2**32
        state.study.sampler = sampler(self.search, seed)
        return state.study.ask(self.space)

    def _propose_queued(self, trial_id: str, state: _CellState, item) -> dict:
        kind, what = item
        if kind == "new":
            return self._live(trial_id, state, what[TUNING_KEY]["role"], None, what)
        prior: Prior = what
        number = None
        if prior.role == SEARCH:  # the same point again, as a trial of this cell's study
            state.study.enqueue_trial(prior.params, skip_if_exists=False)
            number = state.study.ask(self.space).number
        config = self._config(state, prior.seed, prior.params, prior.role, prior.sample, of=prior.of,
                              resume=prior.resume)
        return self._live(trial_id, state, prior.role, number, config)

    def _live(self, trial_id: str, state: _CellState, role: str, number: int | None, config: dict) -> dict:
        self.live[trial_id] = (state.cell.id, role, number, config[TUNING_KEY]["id"])
        if role == SEARCH:
            state.params[config[TUNING_KEY]["id"]] = {k: config[k] for k in self.space}
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return  # a trial this searcher did not propose in this state (e.g. re-run after an error)
        cell, role, number, own_id = self.live.pop(trial_id)
        if role != SEARCH:
            return
        state = self.cells[cell]
        value = (result or {}).get(self.search.metric)
        finite = value is not None and math.isfinite(float(value))
        complete = finite and not error and (result or {}).get("status") == "ok"
        if complete:
            state.study.tell(number, float(value))
        elif finite and not error:  # stopped early by the scheduler: judged at a smaller budget
            state.study.tell(number, state=TrialState.PRUNED)
        else:  # diverged (non-finite metric) or failed
            state.study.tell(number, state=TrialState.FAIL)
        state.candidates.append(Candidate(own_id, float(value) if finite else math.nan, complete))
        state.ended += 1
        self._after_search(state)

    # Tune saves the searcher with each experiment checkpoint (its file name from this
    # template) and restores it into the searcher it rebuilt from the experiment.
    # Plain JSON, not a pickle: a study folder's files are never unpickled. Each
    # cell's Optuna study is rebuilt from its trials; the samplers are seeded per
    # sample (`_ask`), so the rebuilt study proposes what the saved one would have.
    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def save(self, checkpoint_path: str) -> None:
        state = {"live": self.live, "cells": {i: _dump_cell(c) for i, c in self.cells.items()}}
        with open(checkpoint_path, "w") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.live = {k: tuple(v) for k, v in state["live"].items()}
        for cell_id_, saved in state["cells"].items():
            if cell_id_ in self.cells:
                _load_cell(self.cells[cell_id_], saved, self.space)


def _dump_cell(state: _CellState) -> dict:
    trials = [{"params": t.params, "state": t.state.name, "value": t.value}
              for t in state.study.get_trials(deepcopy=False)]
    queue = [["new", what] if kind == "new" else ["again", {**what._asdict(), "candidate": what.candidate}]
             for kind, what in state.queue]
    return {"trials": trials, "proposed": state.proposed, "ended": state.ended, "candidates": state.candidates,
            "params": state.params, "queue": queue, "best": state.best, "finished_search": state.finished_search,
            "baselines_queued": state.baselines_queued, "ended_runs": sorted(map(list, state.ended_runs))}


def _load_cell(state: _CellState, saved: dict, space: dict[str, BaseDistribution]) -> None:
    study = optuna.create_study(direction=state.study.direction, sampler=state.study.sampler)
    for trial in saved["trials"]:  # in number order: each gets its number back
        if trial["state"] == "RUNNING":
            study.enqueue_trial(trial["params"], skip_if_exists=False)
            study.ask(space)
        else:
            dists = {k: space[k] for k in trial["params"]}
            study.add_trial(optuna.trial.create_trial(params=trial["params"], distributions=dists,
                                                      value=trial["value"], state=TrialState[trial["state"]]))
    state.study = study
    state.proposed, state.ended = saved["proposed"], saved["ended"]
    state.candidates = [Candidate(*c) for c in saved["candidates"]]
    state.params = saved["params"]
    state.queue = [(kind, what if kind == "new" else Prior(**{**what, "candidate": Candidate(*what["candidate"])
                                                                if what["candidate"] else None}))
                   for kind, what in saved["queue"]]
    state.best = Candidate(*saved["best"]) if saved["best"] else None
    state.finished_search, state.baselines_queued = saved["finished_search"], saved["baselines_queued"]
    state.ended_runs = {tuple(run) for run in saved["ended_runs"]}


def _frozen(prior: Prior, space: dict[str, BaseDistribution]) -> optuna.trial.FrozenTrial:
    """An ended search trial from an earlier experiment, as an Optuna trial."""
    dists = {k: space[k] for k in prior.params}
    c = prior.candidate
    if c is not None and c.complete:
        return optuna.trial.create_trial(params=prior.params, distributions=dists, value=c.value)
    state = TrialState.PRUNED if c is not None and math.isfinite(c.value) else TrialState.FAIL
    return optuna.trial.create_trial(params=prior.params, distributions=dists, state=state)


class CellASHA(FIFOScheduler):
    """ASHA within each tuning cell's search: a cell's search trials are compared with
    each other only (another cell, e.g. another batch size, reaches other metrics at
    the same epoch); confirm and baseline trials always run their whole budget."""

    def __init__(self, metric: str, mode: str, **asha: object):
        super().__init__()
        self._metric, self._mode, self._asha = metric, mode, asha
        self._cells: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def _of(self, trial) -> ASHAScheduler | None:
        info = trial.config.get(TUNING_KEY) or {}
        if info.get("role") != SEARCH:
            return None
        if info["cell"] not in self._cells:
            self._cells[info["cell"]] = ASHAScheduler(metric=self._metric, mode=self._mode, **self._asha)
        scheduler = self._cells[info["cell"]]
        if trial.trial_id not in scheduler._trial_info:  # e.g. a trial restored with the experiment
            scheduler.on_trial_add(None, trial)
        return scheduler

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        scheduler = self._of(trial)
        return scheduler.on_trial_result(tune_controller, trial, result) if scheduler else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        scheduler = self._of(trial)
        if scheduler:
            scheduler.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        scheduler = self._of(trial)
        if scheduler:
            scheduler.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per tuning cell ({len(self._cells)} cells)"
