"""The one file a trial checkpoint holds, written by trials and read back by restores
and by analysis (e.g. weight templates). No Ray here: analysis reads checkpoints
without starting it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

STATE_FILE = "state.pt"


def save_state(folder: Path, state: dict) -> None:
    """Write to a temporary name, then rename: a crash mid-write leaves the previous
    state.pt (or none), never half a file under the name restores read."""
    path = Path(folder) / STATE_FILE
    tmp = path.with_name(STATE_FILE + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic on POSIX within one folder
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: Path) -> dict:
    """A checkpoint folder's (or state file's) contents, on CPU. weights_only: a
    checkpoint is data (tensors, numbers, dicts), never code to run."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    return torch.load(path, map_location="cpu", weights_only=True)


def last_checkpoint(trial_dir: Path) -> Path | None:
    """The newest `checkpoint_*/state.pt` of a Tune trial folder (Tune numbers them in order)."""
    states = sorted(Path(trial_dir).glob(f"checkpoint_*/{STATE_FILE}"), key=lambda p: p.parent.name)
    return states[-1] if states else None
