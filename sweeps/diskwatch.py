"""The study folder's disk, watched while a study runs: when it fills up or stops
being writable, every trial is stopped and the run ends with one line naming the
folder, instead of each trial failing its retries with a traceback and Tune's
ResultGrid then tripping over error files the full disk cut short.

    watch = DiskWatch(folder)          # a Tune Callback
    ...tuner.fit()...
    problem = disk_problem(folder)     # None, or "no space left on device (12 MB free)"

What a stop keeps: every trial that ended has its rows and checkpoint (Tune writes
a trial's files as it goes, and a checkpoint is renamed into place only once
complete); a stopped trial keeps its last checkpoint, and the next run of the same
command trains only what is left, from those checkpoints (sweeps.planner).

The watch probes the folder: its free space (shutil.disk_usage) and a small write
(create, write, fsync, delete a file), at most every PROBE_EVERY_S, and at once
when a trial fails (a failed checkpoint upload is the first sign). A folder in
object storage (a URI) has no disk to watch: Tune's own errors apply there.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from ray import tune

from trainables import storage

# Free space below which the study stops (bytes): room for the checkpoints and
# result rows in flight and for the report of what ended.
RESERVE_BYTES = 16 * 2**20
PROBE_EVERY_S = 2.0
PROBE_FILE = ".gensweep-write-probe"
# errno values that mean "the disk, not the trial" (full, read-only, no permission, quota).
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
DISK_WORDS = ("No space left on device", "Read-only file system", "Disk quota exceeded", "errno 28", "Errno 28",
              "Errno 30", "errno 30")

# What Tune logs about a stop: the signal, and the trials it left pending (the run's line says it).
STOP_WORDS = ("Stop signal received", "Trials did not complete")

# Problems found in this process, by study folder: a restored experiment's watch
# comes back from Tune's pickle as another object, so what it finds lands here.
_found: dict[str, str] = {}


def probe(folder: Path | str) -> str | None:
    """Why `folder` cannot take the study's writes now, or None when it can."""
    if storage.is_uri(folder) or not Path(folder).is_dir():
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return exc.strerror or str(exc)
    if free < RESERVE_BYTES:
        return f"no space left on device ({free / 2**20:.0f} MB free, {RESERVE_BYTES // 2**20} MB needed)"
    path = Path(folder) / PROBE_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
    except OSError as exc:
        if exc.errno != errno.EROFS:  # a file half-written before the disk filled
            path.unlink(missing_ok=True)
        return describe(exc)
    return None


def describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "it is not writable (permission denied)"
    return exc.strerror or str(exc)


def is_disk_error(exc: BaseException) -> bool:
    """An exception caused by the disk rather than by the trial: an OSError with a
    disk errno, or one whose text says so (a worker's error arrives as text)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return True
        if any(word in str(exc) for word in DISK_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_problem(folder: Path | str) -> str | None:
    """What stopped the study in `folder`, if its disk did (found by a watch, or now)."""
    return _found.get(str(folder)) or probe(folder)


def forget(folder: Path | str) -> None:
    _found.pop(str(folder), None)


class DiskWatch(tune.Callback):
    """Tune callback: ends the experiment once the study folder is full or read-only
    (see the module docstring) the way Ctrl-C does: Tune's stop signal (SIGUSR1, which
    Tune handles like a first Ctrl-C) saves the experiment with its unfinished trials
    still pending or running, so the next run resumes them. (A tune.Stopper would
    mark them TERMINATED, which reads as "ended" like a scheduler's early stop.)"""

    def __init__(self, folder: Path | str):
        self.folder = str(folder)
        self.checked = 0.0

    def _check(self, now: bool = False) -> bool:
        if self.folder in _found:
            return True
        if not now and time.monotonic() - self.checked < PROBE_EVERY_S:
            return False
        self.checked = time.monotonic()
        problem = probe(self.folder)
        if problem is not None:
            _found[self.folder] = problem
            quiet_disk_errors()
            if threading.current_thread() is threading.main_thread():  # where Tune's handler runs
                os.kill(os.getpid(), signal.SIGUSR1)
        return problem is not None

    # tune.Callback
    def on_step_end(self, iteration, trials, **info) -> None:
        self._check()

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:  # failed; Tune will retry it
        self._check(now=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:  # failed out of its retries
        self._check(now=True)


class _DiskNoise(logging.Filter):
    """Drops Tune's and Ray Train's records of failures the full or read-only disk
    causes (a traceback per trial and per sync): the run says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        if _found and any(words in text for words in STOP_WORDS):  # Tune's notes on the stop the watch made
            return False
        return not any(word in text for word in DISK_WORDS)


def quiet_disk_errors() -> None:
    """Once the disk is known to be the problem, Tune's tracebacks about it are noise.
    On the handlers of Ray's loggers: a logger's own filters miss the records its
    children (ray.tune.execution.tune_controller, ray.train._internal.syncer) propagate."""
    loggers = [logging.getLogger(name) for name in ("", "ray", "ray.tune", "ray.train")]
    for handler in {h for logger in loggers for h in logger.handlers}:
        if not any(isinstance(f, _DiskNoise) for f in handler.filters):
            handler.addFilter(_DiskNoise())

