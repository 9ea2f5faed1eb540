"""A node is lost: a real two-node Ray cluster on this machine (head + worker, one CPU
each, token auth), a study of two trials driven with `--address`, one trial on each
node; the worker node is killed (its `ray start`, raylet and workers, SIGKILL) in the
middle of its trial. The trial must be restarted from its last checkpoint on the
head and finish there, and the study must end with both trials ok.

    .venv/bin/python -m pytest -q tests/test_faults_node.py

Storage is shared because both nodes are on this machine (any absolute path is).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from sweeps import cluster
from test_faults import (EXACT, Cli, descendants, kill_all, result_rows, start_time, still_running, trial_failures,
                         wait_until, write_spec)

pytestmark = pytest.mark.study  # runs studies on Ray: left out of `make test-fast`

# cnn_small 8-8 on 10k images: about 1.5-3 s per epoch per core here, 3 epochs.
NODE_STUDY = """\
fixed: {model: cnn_small, channels: [8, 8], train_size: 10000, test_size: 200, batch_size: 32, epochs: 3, optimizer: sgd}
grid:
  lr: [0.01, 0.02]
max_failures: 2
"""


@pytest.fixture(scope="module")
def node_lost(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node")
    # A short state path: Ray's socket paths live under the nodes' temp dirs.
    state = Path(tempfile.mkdtemp(prefix="gs-fault-", dir="/tmp"))
    started = cluster.up(workers=1, cpus=1, state_dir=state, default_ports=False)
    cli = None
    try:
        worker = started.pids["worker-1"]  # `ray start --block` of the worker node
        spec = write_spec(tmp, "node-fault", NODE_STUDY)
        folder = tmp / "results" / "node-fault"
        cli = Cli("run", str(spec), "--results", str(tmp / "results"), "--address", started.gcs_address,
                  log=tmp / "run.log", env={"RAY_AUTH_MODE": "token"})

        def trial_on_the_worker_node():
            cli.watch()
            node = descendants(worker)
            for name, rows in result_rows(folder).items():
                if rows and rows[-1]["pid"] in node:
                    return name, rows
            return None

        name, rows = wait_until(trial_on_the_worker_node, 240, "a report from a trial on the worker node",
                                while_alive=cli)
        time.sleep(0.3 * rows[0]["time_s"])  # into its next epoch
        reported = len(result_rows(folder)[name])
        # The node dies at once: `ray start`, its raylet, agents and the trial's worker.
        node = {worker: start_time(worker), **descendants(worker)}
        os.killpg(worker, signal.SIGKILL)  # cluster.up started it in a session of its own
        kill_all(node)
        killed_at = time.monotonic()
        wait_until(lambda: not still_running(node), 10, "the worker node's processes to die")
        code = cli.wait(240)
        return {"folder": folder, "code": code, "output": cli.output(), "trial": name, "worker_node": rows[0]["node_id"],
                "reported_at_kill": reported, "after_kill_s": time.monotonic() - killed_at,
                "seconds": time.monotonic() - cli.started}
    finally:
        if cli is not None:
            cli.cleanup()
        cluster.down(state)
        shutil.rmtree(state, ignore_errors=True)


def test_the_lost_nodes_trial_is_rescheduled_and_finishes_on_the_head(node_lost):
    folder, name, lost = node_lost["folder"], node_lost["trial"], node_lost["worker_node"]
    print(f"node lost after {node_lost['reported_at_kill']} epoch(s) of its trial; the study ended "
          f"{node_lost['after_kill_s']:.1f} s later ({node_lost['seconds']:.0f} s in all)")  # pytest -s
    assert node_lost["code"] == 0, node_lost["output"][-3000:]
    assert 1 <= node_lost["reported_at_kill"] < 3
    assert trial_failures(folder)[name] == 1
    assert f"Trial task failed for trial {name}" in node_lost["output"]
    assert re.search(rf"lr=0.0[12]: failed; restarting from its last checkpoint \(retry 1 of 2; \S*/tune/{name}/error.txt\)",
                     node_lost["output"])

    rows = result_rows(folder)
    others = [other for other in rows if other != name]
    assert len(others) == 1
    head = rows[others[0]][-1]["node_id"]
    assert head != lost
    # The lost node's trial: every epoch once, in order; the first ones on the lost
    # node, the rest (from its checkpoint) on the head.
    mine = rows[name]
    at_kill = node_lost["reported_at_kill"]
    assert [r["epoch"] for r in mine] == [1, 2, 3]
    assert [r["node_id"] for r in mine] == [lost] * at_kill + [head] * (3 - at_kill)

    trials = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    assert (trials["status"] == "ok").all() and len(trials) == 2
    assert trials.loc[name, "node_id"] == head  # where it finished
    history = pd.read_parquet(folder / "history.parquet")
    assert history[history["trial_id"] == name]["epoch"].tolist() == [1, 2, 3]
    assert history[EXACT].notna().all().all()
    assert "node-fault: 2 of 2 trials reported (2 ok)" in node_lost["output"]
