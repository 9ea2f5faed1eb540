"""Where a result came from: code version, packages, machine."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_PACKAGES = ("torch", "torchvision", "ray", "optuna", "numpy", "pandas", "pyarrow", "pydantic")


def git_commit() -> str:
    """HEAD of the checkout (with '+dirty' for uncommitted changes). A cluster job's
    working dir has no .git, so the submitter passes GENSWEEP_GIT_COMMIT."""
    if os.environ.get("GENSWEEP_GIT_COMMIT"):
        return os.environ["GENSWEEP_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def provenance() -> dict:
    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "driver_host": socket.gethostname(),
        "platform": platform.platform(),
        "command": " ".join([Path(sys.executable).name, "-m", "sweeps", *sys.argv[1:]]),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
