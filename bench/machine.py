"""The machine a benchmark run measured: CPU, cores, torch threads, versions, commit."""

from __future__ import annotations

import os
import platform
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from sweeps.provenance import git_commit, package_versions


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform's guess."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info() -> dict:
    import torch

    versions = package_versions()
    return {
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": versions["python"],
        "torch": versions["torch"],
        "torch_threads": torch.get_num_threads(),
        "ray": versions["ray"],
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def descendants(root: int) -> list[int]:
    """Every live process below `root` in the process tree (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_cpu_seconds() -> float:
    """CPU-seconds the whole machine spent busy since boot (/proc/stat: all but idle
    and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class TreeCpu:
    """CPU-seconds used by this process and by each of its descendants while a block
    runs (`used`: pid -> seconds). A thread follows the tree, because Ray's workers are
    not reaped by this process and os.times() never sees them; the last half second
    of a process that exits in between is missed. Linux only (empty elsewhere).

        with TreeCpu() as cpu: ...
        cpu.used, cpu.total"""

    SAMPLE_EVERY_S = 0.5

    def __init__(self) -> None:
        self.used: dict[int, float] = {}
        self._seen: dict[int, float] = {}  # pid -> its CPU seconds when last seen
        self._before: dict[int, float] = {}  # the same at the start, for processes already running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="bench-tree-cpu", daemon=True)

    @property
    def total(self) -> float:
        return sum(self.used.values())

    def _sample(self) -> None:
        for pid in [os.getpid(), *descendants(os.getpid())]:
            try:
                self._seen[pid] = _cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile

    def _follow(self) -> None:
        while not self._stop.wait(self.SAMPLE_EVERY_S):
            self._sample()

    def __enter__(self) -> "TreeCpu":
        if Path("/proc/stat").exists():
            self._sample()
            self._before = dict(self._seen)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        self.used = {pid: cpu - self._before.get(pid, 0.0) for pid, cpu in self._seen.items()}


class OtherLoad:
    """How busy the machine was with other work while a block ran: the share of all
    cores' time used by processes outside this one's tree (None off Linux, or for a
    block too short to tell).

        with OtherLoad() as load: ...
        load.share   # e.g. 0.02; above several percent, timings are disturbed"""

    MIN_WALL_S = 2.0  # /proc/stat counts in 10 ms ticks; shorter blocks give noise

    def __init__(self) -> None:
        self.share: float | None = None
        self._tree = TreeCpu()

    def __enter__(self) -> "OtherLoad":
        self._start = (time.monotonic(), _busy_cpu_seconds()) if Path("/proc/stat").exists() else None
        self._tree.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._tree.__exit__(*exc)
        if self._start is None:
            return
        wall, busy = time.monotonic() - self._start[0], _busy_cpu_seconds() - self._start[1]
        if wall >= self.MIN_WALL_S:
            self.share = max(0.0, (busy - self._tree.total) / (wall * usable_cores()))
