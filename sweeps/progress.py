"""Short progress output: a line per finished trial, and a status table at most
every `interval` seconds (Tune's own table is switched off: it floods small screens).
Tune pickles callbacks with the experiment, so this holds only plain values."""

from __future__ import annotations

import sys
import time

from ray import tune


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
        self.started = time.monotonic()
        self.last_table = 0.0
        self.finished = 0

    def _label(self, trial) -> str:
        config = {**trial.config.get("cell", {}), **{k: v for k, v in trial.config.items() if k != "cell"}}
        return " ".join(f"{k}={_fmt(config.get(k))}" for k in self.varying)

    def _say(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def _clock(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.monotonic() - self.last_table >= self.interval:
            self.last_table = time.monotonic()
            self._table(trials, trial, result)

    def _count_finished(self, trials, trial) -> None:
        # A resumed experiment starts with trials that ended in an earlier run: count them.
        earlier = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
        self.finished = max(self.finished, earlier) + 1

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count_finished(trials, trial)
        last = trial.last_result or {}
        status = last.get("status", "ok")
        if status == "running":
            status = "stopped early"
        epochs = last.get("epoch", "?")
        self._say(
            f"[{self.study} {self._clock()}] {self.finished}/{self.total} done: {self._label(trial)}: "
            f"{self.metric} {_fmt(last.get(self.metric, float('nan')))} after {epochs} epochs "
            f"({_fmt(float(last.get('time_s', 0.0)))} s) {'' if status == 'ok' else status}".rstrip()
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Tune logs the traceback above this; one line says what happens next.
        self._say(f"[{self.study} {self._clock()}] {self._label(trial)}: failed; restarting from its last checkpoint "
                  f"(retry {trial.num_failures} of {trial.max_failures}; {trial.path or trial.local_path}/error.txt)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count_finished(trials, trial)
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
            epochs = t.config.get("cell", {}).get("epochs", "?")
            if "epoch" not in last:
                self._say(f"    {self._label(t)}: starting")
                continue
            where = f"epoch {last['epoch']}/{epochs}"
            if t.config.get("cell", {}).get("max_steps") and "step" in last:  # a step budget: epochs is ignored
                where = f"step {last['step']}/{t.config['cell']['max_steps']}"
            fit = "train_acc" if "train_acc" in last else "train_loss"  # regression families have no accuracy
            self._say(f"    {self._label(t)}: {where} "
                      f"{fit} {_fmt(last.get(fit, float('nan')))} {self.metric} {_fmt(last.get(self.metric, float('nan')))}")
