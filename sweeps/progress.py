"""Short progress output: a line per finished trial, and a status table at most
every `interval` seconds (Tune's own table is switched off: it floods small screens).
Tune pickles callbacks with the experiment, so this holds only plain values.

A packed trial (spec `pack:`) trains several cells: each gets its own "done" line and
counts as one of the total; the table shows the pack as one running line."""

from __future__ import annotations

import sys
import time

from ray import tune

from sweeps.planner import trial_size
from trainables.contract import CELL_KEY, MEMBERS_KEY, PACK_KEY, TUNING_KEY, flat_config


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "-".join(map(str, value))
    return str(value)


_STATUS = {"TERMINATED": "done", "ERROR": "failed", "RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}


class ProgressPrinter(tune.Callback):
    def __init__(self, study: str, varying: list[str], metric: str, total: int, interval: float = 20.0):
        self.study, self.varying, self.metric = study, varying, metric
        self.total, self.interval = total, interval
        self.setup()

    def setup(self, **info) -> None:
        """Tune calls this when an experiment starts, also a restored one, whose
        printer comes back from the experiment's pickle: this run's clock and counts."""
        self.started = time.monotonic()
        self.last_table = 0.0
        self.finished = 0

    def _label(self, trial) -> str:
        if PACK_KEY in trial.config:  # the values each varying key takes in the pack
            cells = trial.config[PACK_KEY]["cells"]
            spans = {k: list(dict.fromkeys(_fmt(c.get(k)) for c in cells)) for k in self.varying}
            return f"pack of {len(cells)}: " + " ".join(f"{k}={','.join(v)}" for k, v in spans.items())
        label = self._cell_label(flat_config(trial.config))
        tuning = trial.config.get(TUNING_KEY)
        if tuning:  # a tuned study's trial: which part of its cell's tuning it is
            label += f" ({tuning['role']}" + (f" {tuning['sample'] + 1}" if tuning.get("sample") is not None else "") + ")"
        return label

    def _cell_label(self, config: dict) -> str:
        return " ".join(f"{k}={_fmt(config.get(k))}" for k in self.varying)

    def _say(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def _clock(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for member_id, metrics in (result.get(MEMBERS_KEY) or {}).items():
            if metrics.get("status") == "diverged":  # a packed cell ends while its pack goes on
                self._cell_done(trial, member_id, metrics)
        if time.monotonic() - self.last_table >= self.interval:
            self.last_table = time.monotonic()
            self._table(trials, trial, result)

    def _count_finished(self, trials, trial, cells: int = 1) -> None:
        # A resumed experiment starts with trials that ended in an earlier run: count them.
        earlier = sum(trial_size(t.config) for t in trials if t is not trial and t.status in ("TERMINATED", "ERROR"))
        self.finished = max(self.finished, earlier) + cells

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if PACK_KEY in trial.config:
            self._count_finished(trials, trial, 0)
            for member_id, metrics in (last.get(MEMBERS_KEY) or {}).items():
                if metrics.get("status") != "diverged":  # diverged ones said so when they did
                    self._cell_done(trial, member_id, metrics)
            return
        self._count_finished(trials, trial)
        self._say(f"[{self.study} {self._clock()}] {self.finished}/{self.total} done: {self._label(trial)}: "
                  f"{self._outcome(last)}")

    def _cell_done(self, trial, member_id: str, metrics: dict) -> None:
        pack = trial.config[PACK_KEY]
        cell = pack["cells"][pack["ids"].index(member_id)]
        self.finished += 1
        self._say(f"[{self.study} {self._clock()}] {self.finished}/{self.total} done: {self._cell_label(cell)}: "
                  f"{self._outcome(metrics)}")

    def _outcome(self, last: dict) -> str:
        status = last.get("status", "ok")
        if status == "running":
            status = "stopped early"
        return (f"{self.metric} {_fmt(last.get(self.metric, float('nan')))} after {last.get('epoch', '?')} epochs "
                f"({_fmt(float(last.get('time_s', 0.0)))} s) {'' if status == 'ok' else status}").rstrip()

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Tune logs the traceback above this; one line says what happens next.
        self._say(f"[{self.study} {self._clock()}] {self._label(trial)}: failed; restarting from its last checkpoint "
                  f"(retry {trial.num_failures} of {trial.max_failures}; {trial.path or trial.local_path}/error.txt)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count_finished(trials, trial, trial_size(trial.config))
        # trial.path: the trial's folder in the study; local_path is Ray's staging copy under /tmp/ray.
        self._say(f"[{self.study} {self._clock()}] {self.finished}/{self.total} FAILED: {self._label(trial)} "
                  f"(traceback: {trial.path or trial.local_path}/error.txt)")

    def _table(self, trials, current, current_result: dict) -> None:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        summary = ", ".join(f"{n} {_STATUS.get(s, s.lower())}" for s, n in sorted(counts.items()))
        self._say(f"[{self.study} {self._clock()}] {summary} (of {self.total})")
        running = [t for t in trials if t.status == "RUNNING"]
        for t in running:
            last = current_result if t is current else (t.last_result or {})
            cell = t.config[PACK_KEY]["cells"][0] if PACK_KEY in t.config else t.config.get(CELL_KEY, {})
            epochs = cell.get("epochs", "?")
            if "epoch" not in last:
                self._say(f"    {self._label(t)}: starting")
                continue
            where = f"epoch {last['epoch']}/{epochs}"
            if cell.get("max_steps") and "step" in last:  # a step budget: epochs is ignored
                # critical_points' phase 2 counts on after max_steps: at most gn_max_steps more
                where = f"step {last['step']}/{cell['max_steps'] + cell.get('gn_max_steps', 0)}"
            self._say(f"    {self._label(t)}: {where} {_progress_metrics(last, self.metric)}")


def _progress_metrics(last: dict, metric: str) -> str:
    """The fit and the tracked metric of a running trial; for a pack, the range over
    its members."""
    reports = list(last[MEMBERS_KEY].values()) if last.get(MEMBERS_KEY) else [last]
    fit = "train_acc" if "train_acc" in reports[0] else "train_loss"  # regression families have no accuracy

    def span(key: str) -> str:
        values = [r[key] for r in reports if isinstance(r.get(key), (int, float))]
        if not values:
            return "nan"
        low, high = min(values), max(values)
        return _fmt(low) if low == high else f"{_fmt(low)}..{_fmt(high)}"

    return f"{fit} {span(fit)} {metric} {span(metric)}"
