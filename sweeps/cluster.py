"""A real multi-node Ray cluster on this machine: a head and worker nodes as separate
processes, bound to 127.0.0.1, for trying `submit` (and for the tests).

    python -m sweeps cluster up --workers 1 --cpus 1     # prints the job server URL
    python -m sweeps cluster status
    python -m sweeps cluster down

Each node is one `ray start --block` process in its own session, with its own temp
dir and ports; `down` stops exactly those processes (by PID, then their process
groups), never other Ray instances on the machine. The nodes inherit this Python's
PATH, so a job's `python` is the one gensweep is installed in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sweeps.workerenv import WORKER_ENV
from trainables.errors import UserError

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / f"gensweep-cluster-{os.getuid()}"
STATE_FILE = "cluster.json"
# Ray's default ports, used when free: what users and Ray's docs expect.
DEFAULT_GCS_PORT, DEFAULT_DASHBOARD_PORT = 6379, 8265
_READY_TIMEOUT_S = 120.0


@dataclass
class Cluster:
    state_dir: str
    gcs_address: str
    job_address: str
    pids: dict[str, int] = field(default_factory=dict)  # node name -> `ray start --block` pid
    temp_dirs: list[str] = field(default_factory=list)  # the nodes' Ray temp dirs, removed by `down`

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: Path) -> "Cluster | None":
        path = Path(state_dir) / STATE_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def alive(self) -> dict[str, bool]:
        return {name: _pid_alive(pid) for name, pid in self.pids.items()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens there, else a port the kernel picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise UserError("no free TCP port on 127.0.0.1")


def _ray_executable() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _node_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"  # the head requires it; workers and drivers present the token
    env.setdefault("MKL_THREADING_LAYER", "GNU")  # see sweeps/submit.py
    for key, value in WORKER_ENV.items():  # trial processes inherit the node's environment
        env.setdefault(key, value)
    return env


def _start_node(name: str, args: list[str], state_dir: Path) -> int:
    log = open(state_dir / f"{name}.log", "ab")
    proc = subprocess.Popen([_ray_executable(), "start", "--block", "--disable-usage-stats", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=_node_env(), start_new_session=True)
    return proc.pid


def up(workers: int = 1, cpus: float = 1, gpus: int = 0, state_dir: Path = DEFAULT_STATE_DIR,
       default_ports: bool = True) -> Cluster:
    """Start a head and `workers` worker nodes with `cpus` CPUs (and `gpus` logical
    GPUs) each; wait until all have joined. Refuses when this state dir already has
    a running cluster."""
    state_dir = Path(state_dir)
    existing = Cluster.load(state_dir)
    if existing and any(existing.alive().values()):
        raise UserError(f"a cluster started from {state_dir} is running (job server {existing.job_address}); "
                        f"`python -m sweeps cluster down` first")
    state_dir.mkdir(parents=True, exist_ok=True)
    gcs_port = free_port(DEFAULT_GCS_PORT if default_ports else None)
    dashboard_port = free_port(DEFAULT_DASHBOARD_PORT if default_ports else None)
    cluster = Cluster(str(state_dir), f"{HOST}:{gcs_port}", f"http://{HOST}:{dashboard_port}")
    common = ["--node-ip-address", HOST, "--num-cpus", f"{cpus:g}", "--num-gpus", str(gpus)]
    for index in range(workers + 1):
        name = "head" if index == 0 else f"worker-{index}"
        # Nodes on one machine need their own temp dirs (a node deletes a job's
        # working dir when it is done with it) and their own ports. Short paths:
        # Unix socket names under the temp dir must stay below 108 bytes.
        temp_dir = tempfile.mkdtemp(prefix=f"gs-{name[0]}{index}-", dir="/tmp")
        cluster.temp_dirs.append(temp_dir)
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--temp-dir", temp_dir,
                 "--min-worker-port", str(20000 + 1000 * index), "--max-worker-port", str(20999 + 1000 * index)]
        if index == 0:
            role = ["--head", "--port", str(gcs_port), "--dashboard-host", HOST, "--dashboard-port", str(dashboard_port),
                    "--ray-client-server-port", str(free_port()), "--include-dashboard", "true"]
        else:
            role = ["--address", cluster.gcs_address]
        cluster.pids[name] = _start_node(name, [*role, *common, *ports], state_dir)
        cluster.save()
        _wait_for_nodes(cluster, index + 1)
    return cluster


def _wait_for_nodes(cluster: Cluster, count: int) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [name for name, alive in cluster.alive().items() if not alive]
        if dead:
            raise UserError(f"Ray node {dead[0]} exited while starting; see {cluster.state_dir}/{dead[0]}.log")
        if len(nodes(cluster)) >= count:
            return
        time.sleep(1.0)
    raise UserError(f"the cluster did not reach {count} node(s) within {_READY_TIMEOUT_S:.0f} s; "
                    f"see the logs in {cluster.state_dir}")


def nodes(cluster: Cluster) -> list[str]:
    """Ids of the cluster's live nodes, asked through `ray status` (no driver needed)."""
    status = subprocess.run([_ray_executable(), "status", "--address", cluster.gcs_address], capture_output=True,
                            text=True, env=_node_env(), timeout=60)
    if status.returncode != 0:
        return []
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return [word for line in active.splitlines() for word in line.split() if word.startswith("node_")]


def down(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = 30.0) -> list[str]:
    """Stop the nodes started from `state_dir` (workers first); returns their names."""
    cluster = Cluster.load(Path(state_dir))
    if cluster is None:
        return []
    order = sorted(cluster.pids, key=lambda name: name == "head")  # head last
    for name in order:
        _terminate(cluster.pids[name], timeout)
    for temp_dir in cluster.temp_dirs:
        _remove(Path(temp_dir))
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return order


def _remove(folder: Path, attempts: int = 10) -> None:
    """Delete a node's temp dir. A node whose processes were killed from outside (a
    lost node) may still have a child writing its last log lines there for a moment:
    try again until the folder stays gone."""
    for _ in range(attempts):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.5)


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM to `ray start --block` (it stops its node's processes), then SIGKILL to
    its process group if anything is left."""
    if not _pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)  # the session we started it in: its pgid is its pid
    except (ProcessLookupError, PermissionError):
        pass
