"""The one file a trial checkpoint holds, written by trials and read back by restores
and by analysis (e.g. weight templates). No Ray here: analysis reads checkpoints
without starting it."""

from __future__ import annotations

import os
import zipfile
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


class CheckpointError(Exception):
    """A checkpoint that cannot be trusted: `path: why` in one line."""


def damage(path: Path) -> str | None:
    """Why a state file cannot be trusted (missing, empty, cut short, or a record
    whose CRC-32 does not match), or None when it is whole. torch.save writes a zip
    archive with a CRC per record; zipfile checks them all without unpickling
    anything. torch.load itself notices a cut but not a flipped byte in a tensor."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        return "missing"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"cut short or not a checkpoint ({type(exc).__name__}: {exc})"
    return f"record {bad} fails its CRC check (corrupted)" if bad else None


def load_state(path: Path) -> dict:
    """A checkpoint folder's (or state file's) contents, on CPU. weights_only: a
    checkpoint is data (tensors, numbers, dicts), never code to run. Raises
    CheckpointError for a damaged file (`damage`)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if (why := damage(path)) is not None:
        raise CheckpointError(f"{path}: {why}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whole as a zip, but not a state torch can read
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def checkpoints(trial_dir: Path) -> list[Path]:
    """The `checkpoint_*/state.pt` files of a Tune trial folder, oldest first (Tune numbers them in order)."""
    return sorted(Path(trial_dir).glob(f"checkpoint_*/{STATE_FILE}"), key=lambda p: p.parent.name)


def last_checkpoint(trial_dir: Path) -> Path | None:
    """The newest `checkpoint_*/state.pt` of a Tune trial folder."""
    states = checkpoints(trial_dir)
    return states[-1] if states else None


def good_checkpoint(trial_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest whole checkpoint of a trial folder (None: none is), and a line
    for each newer one that is damaged (`path: why`)."""
    skipped = []
    for state in reversed(checkpoints(trial_dir)):
        why = damage(state)
        if why is None:
            return state, skipped
        skipped.append(f"{state}: {why}")
    return None, skipped
