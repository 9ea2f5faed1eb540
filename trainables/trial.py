"""What a trial needs from Ray: its device, its threads, its checkpoint, and a way
to report. Families call these; the engine never sees Ray."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from trainables.checkpoint import CheckpointError, load_state, save_state
from trainables.contract import Report, RESUME_KEY, STARTED_OVER_KEY

log = logging.getLogger("gensweep.trial")

# Set by restored_state when this trial's checkpoint was damaged and it trains from
# the start; the trial's next report carries STARTED_OVER_KEY. (One trial at a time
# runs in a worker process.)
_started_over = False


def trial_device() -> tuple[torch.device, dict]:
    """The device Ray gave this trial, and what to record about it.

    A trial with a GPU share uses the GPU Ray assigned (Ray sets CUDA_VISIBLE_DEVICES,
    so it is cuda:0 here); without CUDA it falls back to the CPU with one warning.
    On CPU, torch uses as many threads as the trial has CPUs, so concurrent trials do
    not oversubscribe the cores."""
    import ray  # here, not at import: the engine's code runs without Ray (bench/gpu_check.sh)

    resources = ray.get_runtime_context().get_assigned_resources() if ray.is_initialized() else {}
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = resources.get("GPU", 0)
    # The logical GPU ids Ray gave this trial (it also narrows CUDA_VISIBLE_DEVICES to them).
    gpu_ids = ",".join(str(i) for i in ray.get_gpu_ids()) if gpus > 0 else ""
    info: dict = {"hostname": socket.gethostname(), "node_id": _node_id(), "gpu_name": "", "gpu_ids": gpu_ids}
    if gpus > 0 and torch.cuda.is_available():
        device = torch.device("cuda", 0)
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["device"] = f"cuda:{os.environ.get('CUDA_VISIBLE_DEVICES', '0').split(',')[0]}"
    else:
        if gpus > 0:
            log.warning("trial was given %.2g GPU but CUDA is not available here; running on CPU", gpus)
        device = torch.device("cpu")
        info["device"] = "cpu"
    torch.set_num_threads(cpus)
    info["num_threads"] = cpus
    return device, info


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # not inside Ray (unit tests)
        return ""


def restored_state(config: Mapping) -> dict | None:
    """The engine state to continue from: this trial's latest checkpoint if Tune is
    restoring it, else the checkpoint folder the trial's config was carried over with
    from an earlier experiment of the study (its RESUME_KEY, set by the planner),
    else None."""
    from ray import tune

    global _started_over
    _started_over = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and config.get(RESUME_KEY):
        checkpoint = tune.Checkpoint(config[RESUME_KEY])
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        try:
            return load_state(Path(folder))
        except CheckpointError as exc:
            # Tune keeps one checkpoint per trial: with that one damaged, the trial
            # trains from the start, and its reports say so (STARTED_OVER_KEY) so
            # that the rows of the abandoned attempt are dropped, not doubled.
            name = Path(checkpoint.path).name
            print(f"checkpoint {name} is damaged ({exc}); the trial starts over from step 0", flush=True)
            _started_over = True
            return None


def tune_reporter(extra: dict) -> Report:
    """An engine callback: report metrics (plus `extra`, e.g. device and n_params)
    to Tune, with the state as a checkpoint when there is one."""

    from ray import tune

    from trainables import plugins

    if plugins.active():  # results never mix two versions of a user's code
        extra = {**extra, "plugin_sha256": plugins.provenance()}

    def report(metrics: dict, state: dict | None) -> None:
        global _started_over
        metrics = {**metrics, **extra}
        if _started_over:  # the first report after a damaged checkpoint (restored_state)
            metrics[STARTED_OVER_KEY] = True
            _started_over = False
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="gensweep-ckpt-") as folder:
            save_state(Path(folder), state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    return report
