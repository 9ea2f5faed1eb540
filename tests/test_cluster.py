"""A real two-node Ray cluster on this machine (head + worker as separate processes on
127.0.0.1, token auth on): the wd smoke study submitted as a Ray job runs its trials
on both nodes and writes the same results as a local run; the plugin example runs
there too, with a plugin file from outside the checkout; job commands and auth
errors behave; `down` stops exactly the processes `up` started."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from sweeps import cluster as local_cluster

pytestmark = pytest.mark.study  # runs studies on Ray: left out of `make test-fast`

REPO = Path(__file__).resolve().parent.parent
SPEC = "sweeps/wd.yaml"


def sweeps_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def two_nodes():
    # A short state path: Ray's socket paths live under the nodes' temp dirs.
    state = Path(tempfile.mkdtemp(prefix="gs-test-", dir="/tmp"))
    started = local_cluster.up(workers=1, cpus=1, state_dir=state, default_ports=False)
    try:
        yield started
    finally:
        local_cluster.down(state)
        assert not any(local_cluster._pid_alive(pid) for pid in started.pids.values())
        assert not any(Path(d).exists() for d in started.temp_dirs)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def submitted(two_nodes, tmp_path_factory):
    storage = tmp_path_factory.mktemp("shared")
    proc = sweeps_cli("submit", SPEC, "--profile", "smoke", "--address", two_nodes.job_address, "--storage", str(storage))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return storage / "wd-smoke", proc


def test_submitted_study_runs_on_both_nodes(submitted):
    folder, proc = submitted
    assert "submitted wd-smoke as Ray job raysubmit_" in proc.stdout and "SUCCEEDED" in proc.stdout
    trials = pd.read_parquet(folder / "trials.parquet")
    history = pd.read_parquet(folder / "history.parquet")
    assert len(trials) == 2 and (trials["status"] == "ok").all()
    # one CPU per node and one CPU per trial: each node ran one trial
    assert trials["node_id"].nunique() == 2 and (trials["node_id"].str.len() > 20).all()
    assert (trials["device"] == "cpu").all() and trials["hostname"].notna().all()
    assert set(history["trial_id"]) == set(trials["trial_id"])
    assert (folder / "report" / "index.html").exists()


def test_submitted_results_equal_a_local_run(submitted, tmp_path):
    folder, _ = submitted
    local = sweeps_cli("run", SPEC, "--profile", "smoke", "--results", str(tmp_path))
    assert local.returncode == 0, local.stderr[-3000:]
    columns = ["weight_decay", "final_test_acc", "final_train_acc"]
    remote = pd.read_parquet(folder / "trials.parquet")[columns].sort_values("weight_decay").reset_index(drop=True)
    here = pd.read_parquet(tmp_path / "wd-smoke" / "trials.parquet")[columns].sort_values("weight_decay").reset_index(drop=True)
    pd.testing.assert_frame_equal(remote, here)
    history = ["weight_decay", "epoch", "train_loss", "test_loss", "weight_norm"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(folder / "history.parquet")[history].sort_values("weight_decay").reset_index(drop=True),
        pd.read_parquet(tmp_path / "wd-smoke" / "history.parquet")[history].sort_values("weight_decay").reset_index(drop=True),
        rtol=1e-6)


def test_the_plugin_example_runs_through_submit_with_a_plugin_from_outside_the_checkout(two_nodes, tmp_path):
    """examples/own.yaml's smoke profile as a Ray job, with one of its plugin files
    moved outside the checkout: it travels as the job's py_module, and the trials on
    both nodes run it (their results carry its hash)."""
    import hashlib
    import json

    import yaml

    outside = tmp_path / "my_plugins"
    outside.mkdir()
    shutil.copy(REPO / "examples" / "plugins" / "margin.py", outside / "margin.py")
    spec = yaml.safe_load((REPO / "examples" / "own.yaml").read_text())
    spec["plugins"] = ["plugins/resmlp.py", str(outside / "margin.py"), "plugins/shifted.py"]
    # a submitted spec lives in the checkout (the job uploads it); this one only for this test
    path = REPO / "examples" / f".submit-test-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        proc = sweeps_cli("submit", str(path.relative_to(REPO)), "--profile", "smoke", "--address",
                          two_nodes.job_address, "--storage", str(tmp_path / "shared"))
    finally:
        path.unlink()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "travel as the job's py_module gensweep_job_plugins_" in proc.stdout and "SUCCEEDED" in proc.stdout
    folder = tmp_path / "shared" / "own-smoke"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "ok").all() and trials["node_id"].nunique() == 2
    assert trials["final_margin_mean"].notna().all()
    sha = hashlib.sha256((outside / "margin.py").read_bytes()).hexdigest()
    assert trials["plugin_sha256"].str.contains(f"margin.py={sha}").all()
    margin = json.loads((folder / "study.json").read_text())["plugins"][1]
    # the job read the shipped copy, not the file on this machine's disk
    assert margin["sha256"] == sha and "gensweep_job_plugins_" in margin["path"] and str(outside) not in margin["path"]
    assert (folder / "report" / "03-margin_bars.png").exists()


def test_job_commands_list_and_show_the_job(two_nodes, submitted):
    listed = sweeps_cli("jobs", "--address", two_nodes.job_address)
    assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout and "wd-smoke" in listed.stdout
    job_id = next(line.split()[0] for line in listed.stdout.splitlines() if "wd-smoke" in line)
    logs = sweeps_cli("logs", job_id, "--address", two_nodes.job_address)
    assert logs.returncode == 0 and "wd-smoke: 2 of 2 trials reported (2 ok)" in logs.stdout
    stopped = sweeps_cli("stop", job_id, "--address", two_nodes.job_address)
    assert stopped.returncode == 0 and "was not running" in stopped.stdout


@pytest.mark.parametrize("env, message", [
    ({"RAY_AUTH_TOKEN": "not-the-token"}, "rejected the token"),
    ({"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": "/nonexistent/token"}, "requires a token and none was found"),
])
def test_a_wrong_or_missing_token_is_one_line(two_nodes, env, message):
    proc = sweeps_cli("submit", SPEC, "--profile", "smoke", "--address", two_nodes.job_address, "--no-wait", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_no_server_is_one_line():
    proc = sweeps_cli("jobs", "--address", f"http://127.0.0.1:{local_cluster.free_port()}")
    assert proc.returncode == 2 and "no Ray job server answers there" in proc.stderr


def test_job_server_listens_on_loopback_only(two_nodes):
    port = int(two_nodes.job_address.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    external = [ip for ip in _own_addresses() if not ip.startswith("127.")]
    if not external:
        pytest.skip("this machine has no non-loopback address")
    with pytest.raises(OSError):
        socket.create_connection((external[0], port), timeout=5).close()


def _own_addresses() -> list[str]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
        return [probe.getsockname()[0]]
    except OSError:
        return []
    finally:
        probe.close()
