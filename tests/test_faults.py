"""Faults, for real: a trial's worker process is SIGKILLed mid-epoch, the driver
(`python -m sweeps run`) gets Ctrl-C and later SIGKILL, a learning rate blows up.
Each study is a small spec written to tmp_path and run through the CLI as a process
of its own; tests/test_faults_node.py loses a node of a two-node cluster.

    .venv/bin/python -m pytest -q tests/test_faults.py

What must hold: a killed trial restarts from its last checkpoint and ends exactly
where an uninterrupted run of the same config and seed ends; Ctrl-C stops within
seconds with exit status 130 and says how to resume; after Ctrl-C or a killed
driver the same command resumes, finished trials are not trained again; a diverged
trial is counted, kept out of means, and the study goes on. The helpers below find
processes through /proc (Linux) by parent and remember their start times, so a test
kills only what it started, even after a driver's death orphans Ray's processes.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from trainables.contract import read_rows, trial_folders

pytestmark = pytest.mark.study  # runs studies on Ray: left out of `make test-fast`

REPO = Path(__file__).resolve().parent.parent


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None  # field 22 of stat: start time in clock ticks


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (children, their children, ...): pid -> start time."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(name))
    found, frontier = {}, [pid]
    while frontier:
        for child in parents.get(frontier.pop(), []):
            start = start_time(child)
            if start is not None:
                found[child] = start
                frontier.append(child)
    return found


def kill_all(processes: dict[int, str]) -> list[str]:
    """SIGKILL those of `processes` still alive (and still the same process); returns
    their names, e.g. 'raylet (1234)'."""
    killed = []
    for pid, start in processes.items():
        if alive(pid) and start_time(pid) == start:
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{name} ({pid})")
            except (ProcessLookupError, OSError):
                pass
    return killed


def still_running(processes: dict[int, str]) -> list[int]:
    return [pid for pid, start in processes.items() if alive(pid) and start_time(pid) == start]


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.1,
               while_alive: "Cli | None" = None):
    """Poll until `condition()` is truthy (returns it); fails after `timeout` seconds,
    or as soon as `while_alive` (a CLI run) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if while_alive is not None and while_alive.exited():
            raise AssertionError(f"the run exited ({while_alive.proc.returncode}) before {what}:\n{while_alive.output()[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def listening_sockets(pids: list[int]) -> dict[tuple[str, int], str]:
    """(address, port) -> process name, for every TCP socket in LISTEN state owned
    by one of `pids`: /proc/PID/fd's socket inodes matched against /proc/net/tcp and
    tcp6 (state 0A). Addresses as text: '127.0.0.1', '0.0.0.0', '::', '::ffff:127.0.0.1'."""
    import ipaddress

    owner: dict[str, str] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owner[link[8:-1]] = f"{name} ({pid})"
        except OSError:  # the process ended meanwhile
            continue
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owner:
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            # the kernel prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[(str(ipaddress.ip_address(packed)), int(hex_port, 16))] = owner[inode]
    return found


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


class Cli:
    """`python -m sweeps ARGS` in its own session (so it can be signalled like a
    terminal's foreground job), output to a file; remembers every process below it
    and the TCP sockets they listen on."""

    def __init__(self, *args: str, log: Path, env: dict | None = None):
        self.log = Path(log)
        self.started = time.monotonic()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "sweeps", *args], cwd=REPO, stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                         start_new_session=True)
        self.seen: dict[int, str] = {}
        self.listening: dict[tuple[str, int], str] = {}

    def watch(self) -> dict[int, str]:
        """Record the processes below the CLI now (Ray's, the trials' workers) and
        their listening sockets."""
        if self.alive():
            now = descendants(self.proc.pid)
            self.seen.update(now)
            self.listening.update(listening_sockets([self.proc.pid, *now]))
        return self.seen

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exited(self) -> bool:
        return not self.alive()

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            self.watch()
            time.sleep(0.2)
        if self.alive():
            raise AssertionError(f"the run did not end within {timeout:.0f} s:\n{self.output()[-3000:]}")
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_driver(self) -> tuple[int, list[str]]:
        """SIGKILL the CLI process alone (as the kernel's OOM killer would), then what
        it leaves behind (Ray's processes and the trials' workers lose their driver);
        returns its exit status and the orphans killed."""
        self.watch()
        os.kill(self.proc.pid, signal.SIGKILL)
        code = self.wait(30)
        time.sleep(2)
        return code, kill_all(self.seen)

    def cleanup(self) -> list[str]:
        """Kill the CLI (if still running) and whatever it left behind; returns the PIDs killed."""
        self.watch()
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        return kill_all(self.seen)


def run_to_end(*args: str, log: Path, env: dict | None = None, timeout: float = 300) -> tuple[int, str]:
    """`python -m sweeps ARGS` to its end: (exit status, output); whatever it leaves is killed."""
    cli = Cli(*args, log=log, env=env)
    try:
        return cli.wait(timeout), cli.output()
    finally:
        cli.cleanup()


def result_rows(study_folder: Path) -> dict[str, list[dict]]:
    """Trial folder name -> its raw result.json rows, over every experiment (tune*/),
    in the order written; rows cut short by a kill are skipped."""
    return {name: [row for folder in folders for row in read_rows(folder / "result.json")]
            for name, folders in trial_folders(study_folder).items()}


def trial_cells(study_folder: Path) -> dict[str, dict]:
    """Trial folder name -> its grid cell (params.json), for the trials created so far."""
    out = {}
    for params in Path(study_folder).glob("tune*/*/params.json"):
        try:
            out[params.parent.name] = json.loads(params.read_text())["cell"]
        except (OSError, ValueError, KeyError):
            pass
    return out


def trial_failures(study_folder: Path) -> dict[str, int]:
    """Trial folder name -> how often Tune restarted it after a failure, from the
    latest experiment state (Tune's `num_failures`)."""
    out: dict[str, int] = {}
    for experiment in sorted(Path(study_folder).glob("tune*")):
        states = sorted(experiment.glob("experiment_state-*.json"))
        if not states:
            continue
        for trial_json, meta_json in json.loads(states[-1].read_text())["trial_data"]:
            trial, meta = json.loads(trial_json), json.loads(meta_json)
            name = Path(trial.get("relative_logdir") or trial["trial_id"]).name
            out[name] = meta.get("num_failures", 0)
    return out


# Metrics that must be identical between a restarted trial and an uninterrupted one
# (time_s is wall time and differs).
EXACT = ["train_loss", "train_acc", "test_loss", "test_acc", "gap_acc", "gap_loss", "weight_norm", "grad_norm",
         "running_loss"]


def write_spec(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nfamily: classifier\ndescription: fault test\n{body}")
    return path


def by_run(folder: Path) -> dict[str, str]:
    """The `run` label of each trial (the variant axis of the worker study) -> trial folder name."""
    return {cell["run"]: name for name, cell in trial_cells(folder).items()}


# --- 1 and 5: a trial's worker is killed; a trial diverges ---------------------------------

# cnn_small 8-8 on 12k images at batch 32: about 1.5-3 s per epoch on one core here,
# long enough to kill a worker in the middle of one. Two identical cells (the `run`
# label is not a training setting) run side by side on the two CPUs: one is killed,
# the other is the uninterrupted reference with the same config and seed. The third
# cell, an MLP at lr 1e4 (SGD), turns its loss into NaN within 50 steps. (cnn_small
# at lr 1e4 does not: its ReLUs die and the loss stays finite, about 2e4 after two epochs.)
WORKER_STUDY = """\
fixed: {train_size: 12000, test_size: 200, batch_size: 32, epochs: 3, optimizer: sgd}
grid:
  run:
    - {name: killed, model: cnn_small, channels: [8, 8], lr: 0.05}
    - {name: reference, model: cnn_small, channels: [8, 8], lr: 0.05}
    - {name: diverging, model: mlp, hidden: [32], lr: 10000.0}
max_failures: 2
"""


def side_by_side(tmp: Path, name: str, body: str) -> tuple[Path, tuple[str, ...], Cli]:
    """Start study `name` (spec `body`) through the CLI with two CPUs for Ray whatever
    the machine has, so that two cells run side by side: (its folder, the command, the run)."""
    spec = write_spec(tmp, name, body)
    command = ("run", str(spec), "--results", str(tmp / "results"))
    return tmp / "results" / name, command, Cli(*command, log=tmp / "run.log", env={"RAY_OVERRIDE_RESOURCES": '{"CPU": 2}'})


def when_reported(cli: Cli, folder: Path, run: str, ready: Callable[[str, list[dict]], bool], what: str):
    """Wait until the trial of variant `run` has rows for which `ready(name, rows)`;
    returns (its trial folder name, its rows)."""
    def probe():
        cli.watch()
        name = by_run(folder).get(run)
        rows = result_rows(folder).get(name, []) if name else []
        return (name, rows) if rows and ready(name, rows) else None

    return wait_until(probe, 180, what, while_alive=cli)


@pytest.fixture(scope="module")
def worker_killed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker")
    folder, _, cli = side_by_side(tmp, "worker-fault", WORKER_STUDY)  # killed and reference side by side
    try:
        name, rows = when_reported(cli, folder, "killed", lambda name, rows: True, "the first report of the trial to kill")
        # Into the next epoch, then kill the trial's worker process (the Ray actor running it).
        time.sleep(0.3 * rows[0]["time_s"])
        reported = len(result_rows(folder)[name])
        victim = rows[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        code = cli.wait(240)
        return {"folder": folder, "code": code, "output": cli.output(), "killed": name, "victim": victim,
                "reported_at_kill": reported, "seconds": time.monotonic() - cli.started, "listening": cli.listening}
    finally:
        cli.cleanup()


def test_a_killed_worker_restarts_from_its_checkpoint_and_ends_like_an_uninterrupted_run(worker_killed):
    folder, name = worker_killed["folder"], worker_killed["killed"]
    print(f"worker killed after {worker_killed['reported_at_kill']} epoch(s); study took {worker_killed['seconds']:.0f} s")
    assert worker_killed["code"] == 0, worker_killed["output"][-3000:]
    at_kill = worker_killed["reported_at_kill"]
    assert 1 <= at_kill < 3, "the worker must die before its trial's last epoch"
    # Tune restarted the trial once, from the checkpoint of the last reported epoch.
    assert trial_failures(folder)[name] == 1
    assert re.search(rf"Restored on .* from checkpoint: .*{name}/checkpoint_{at_kill - 1:06d}\)", worker_killed["output"])
    assert re.search(rf"run=killed: failed; restarting from its last checkpoint \(retry 1 of 2; \S*/tune/{name}/error.txt\)",
                     worker_killed["output"])
    # Raw reports: each epoch once, in order; the epochs after the kill came from a new process.
    rows = result_rows(folder)[name]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["pid"] == worker_killed["victim"] for r in rows] == [True] * at_kill + [False] * (3 - at_kill)

    history = pd.read_parquet(folder / "history.parquet")
    runs = {run: history[history["run"] == run].reset_index(drop=True) for run in ("killed", "reference")}
    assert runs["killed"]["epoch"].tolist() == [1, 2, 3]
    assert runs["killed"]["trial_id"].iloc[0] == name
    # Same config and seed on CPU: the restarted trial's every epoch equals the reference's, exactly.
    pd.testing.assert_frame_equal(runs["killed"][["epoch", *EXACT]], runs["reference"][["epoch", *EXACT]],
                                  check_exact=True)
    trials = pd.read_parquet(folder / "trials.parquet").set_index("run")
    assert trials.loc["killed", "status"] == trials.loc["reference", "status"] == "ok"
    for metric in ("final_test_acc", "final_test_loss", "final_train_loss", "final_weight_norm"):
        assert trials.loc["killed", metric] == trials.loc["reference", metric], metric
    assert trials.loc["killed", "final_test_acc"] > 0.5  # it learned: 3 epochs reach about 0.8


def test_a_local_run_listens_on_the_loopback_address_only(worker_killed):
    """Every TCP socket Ray's processes (GCS, raylet, object manager, agents, the
    trials' workers) and the driver listen on, sampled while trials ran, is on
    127.0.0.1: a laptop on a shared network exposes nothing (sweeps.runner.bind_loopback)."""
    listening = worker_killed["listening"]
    owners = " ".join(listening.values())
    assert "gcs_server" in owners and "raylet" in owners, listening  # the sampling saw Ray's servers
    exposed = {f"{address}:{port}": who for (address, port), who in listening.items() if not is_loopback(address)}
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_a_diverged_trial_is_counted_and_left_out_of_means_while_the_study_goes_on(worker_killed):
    folder, output = worker_killed["folder"], worker_killed["output"]
    assert worker_killed["code"] == 0  # a diverged trial is an outcome, not a failure
    trials = pd.read_parquet(folder / "trials.parquet").set_index("run")
    assert trials["status"].to_dict() == {"killed": "ok", "reference": "ok", "diverging": "diverged"}
    assert trials.loc["diverging", "epochs_done"] == 1 and math.isnan(trials.loc["diverging", "final_test_acc"])
    history = pd.read_parquet(folder / "history.parquet")
    last = history[history["run"] == "diverging"].iloc[-1]
    assert last["status"] == "diverged" and not math.isfinite(last["running_loss"])
    # The terminal summary and the report page count it and say it is left out.
    assert "worker-fault: 3 of 3 trials reported (1 diverged, 2 ok)" in output
    assert "1 diverged trial(s) are left out of means and figures" in output
    page = (folder / "report" / "index.html").read_text()
    assert "Trials: 1 diverged, 2 ok." in page
    assert "1 trial(s) diverged (non-finite loss) and are excluded from means and figures." in page
    table = page.split("<h2>Final metrics</h2>", 1)[1].split("</table>", 1)[0]
    assert "killed" in table and "reference" in table and "diverging" not in table and "nan" not in table.lower()
    assert list((folder / "report").glob("*.png"))


# --- 3 and 2: Ctrl-C, then the driver is killed; each time the same command resumes ---------

# Three trials of about 2-4 s each, one at a time (Ray gets one CPU).
DRIVER_STUDY = """\
fixed: {model: cnn_small, channels: [8, 8], train_size: 6000, test_size: 200, batch_size: 32, epochs: 2, optimizer: sgd}
grid:
  lr: [0.01, 0.02, 0.03]
"""
ONE_CPU = {"RAY_OVERRIDE_RESOURCES": '{"CPU": 1}'}


def ended_and_started(folder: Path) -> tuple[set, set]:
    """(names of trials whose last row is ok, names of those still running) in `folder`."""
    rows = result_rows(folder)
    ended = {name for name, r in rows.items() if r and r[-1]["status"] == "ok"}
    started = {name for name, r in rows.items() if r and r[-1]["status"] == "running"}
    return ended, started


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Run 1 gets Ctrl-C once a trial has finished and the next has reported an epoch;
    run 2 (the same command) resumes and its driver is SIGKILLed once one more trial
    has finished; run 3 (the same command) finishes the study."""
    tmp = tmp_path_factory.mktemp("driver")
    spec = write_spec(tmp, "driver-fault", DRIVER_STUDY)
    results = tmp / "results"
    folder = results / "driver-fault"
    command = ("run", str(spec), "--results", str(results))
    seen: dict = {}

    # Run 1: Ctrl-C. A terminal sends SIGINT to the whole foreground process group.
    first = Cli(*command, log=tmp / "run1.log", env=ONE_CPU)
    try:
        def one_done_one_started():
            first.watch()
            ended, started = ended_and_started(folder)
            return (ended, started) if ended and started else None

        wait_until(one_done_one_started, 180, "a finished trial and a started one", while_alive=first)
        time.sleep(0.3)  # into the started trial's next epoch
        seen["rows_at_ctrl_c"] = result_rows(folder)
        interrupted_at = time.monotonic()
        os.killpg(first.proc.pid, signal.SIGINT)
        seen["ctrl_c_code"] = first.wait(60)
        seen["ctrl_c_seconds"] = time.monotonic() - interrupted_at
        seen["ctrl_c_output"] = first.output()
        seen["rows_after_ctrl_c"] = result_rows(folder)
        # ray.shutdown at exit stops Ray's processes and the trials' workers.
        try:
            wait_until(lambda: not still_running(first.seen), 15, "Ray's processes to end after Ctrl-C")
            seen["left_after_ctrl_c"] = []
        except AssertionError:
            seen["left_after_ctrl_c"] = still_running(first.seen)
    finally:
        first.cleanup()
    seen["status"] = subprocess.run([sys.executable, "-m", "sweeps", "status", str(spec), "--results", str(results)],
                                    cwd=REPO, capture_output=True, text=True, timeout=120)

    # Run 2: resume, then SIGKILL of the driver alone (as the kernel's OOM killer would).
    second = Cli(*command, log=tmp / "run2.log", env=ONE_CPU)
    try:
        ended_before = set(ended_and_started(folder)[0])

        def another_done():
            second.watch()
            ended, started = ended_and_started(folder)
            return ended if len(ended) > len(ended_before) and started else None

        wait_until(another_done, 180, "one more finished trial", while_alive=second)
        time.sleep(0.3)
        seen["rows_at_kill"] = result_rows(folder)
        seen["kill_code"], seen["orphans"] = second.kill_driver()
        seen["resume1_output"] = second.output()
    finally:
        second.cleanup()

    # Run 3: resume to the end.
    seen["final_code"], seen["final_output"] = run_to_end(*command, log=tmp / "run3.log", env=ONE_CPU, timeout=240)
    seen["rows_final"] = result_rows(folder)
    seen["folder"] = folder
    return seen


def test_ctrl_c_stops_within_seconds_with_status_130_and_says_how_to_resume(interrupted):
    output = interrupted["ctrl_c_output"]
    print(f"Ctrl-C: exit {interrupted['ctrl_c_code']} {interrupted['ctrl_c_seconds']:.1f} s after SIGINT; "
          f"status:\n{interrupted['status'].stdout}")  # shown with pytest -s
    assert interrupted["ctrl_c_code"] == 130, output[-3000:]
    assert interrupted["ctrl_c_seconds"] < 15
    done = sum(bool(r) and r[-1]["status"] == "ok" for r in interrupted["rows_after_ctrl_c"].values())
    assert done in (1, 2)
    assert f"driver-fault stopped with {3 - done} trial(s) unfinished; run the same command again to resume" in output
    assert "Tuner.restore(" not in output  # Tune's hint for API users would contradict it
    assert interrupted["left_after_ctrl_c"] == []  # Ray and the trials' workers stopped with it
    status = interrupted["status"]
    assert status.returncode == 0 and f"3 cells: {done} done" in status.stdout, status.stdout + status.stderr


def test_resume_after_ctrl_c_and_after_a_killed_driver_trains_nothing_twice(interrupted):
    print(f"killed driver: orphaned processes killed afterwards: {interrupted['orphans']}")
    assert interrupted["kill_code"] == -signal.SIGKILL
    assert "resuming driver-fault" in interrupted["resume1_output"]
    assert interrupted["final_code"] == 0, interrupted["final_output"][-3000:]
    assert "resuming driver-fault" in interrupted["final_output"]
    before, after = interrupted["rows_at_ctrl_c"], interrupted["rows_final"]
    at_kill = interrupted["rows_at_kill"]
    # Trials that had finished are not trained again: their reports are exactly those
    # written before the interruption (same epochs, same worker process).
    for earlier in (before, at_kill):
        for name, rows in earlier.items():
            if rows and rows[-1]["status"] == "ok":
                assert after[name] == rows, name
    # No trial trained an epoch twice: each epoch of each trial was reported once, and
    # the trial cut short each time continued from its checkpoint in a new process.
    assert len(after) == 3
    for name, rows in after.items():
        assert [r["epoch"] for r in rows] == [1, 2], name
        assert rows[-1]["status"] == "ok"
    resumed = [name for name, rows in after.items() if rows[0]["pid"] != rows[1]["pid"]]
    assert len(resumed) >= 1
    folder = interrupted["folder"]
    trials = pd.read_parquet(folder / "trials.parquet")
    history = pd.read_parquet(folder / "history.parquet")
    assert len(trials) == 3 and (trials["status"] == "ok").all()
    assert sorted(trials["lr"]) == [0.01, 0.02, 0.03]
    assert len(history) == 6 and not history.duplicated(["trial_id", "epoch"]).any()
    assert "driver-fault: 3 of 3 trials reported (3 ok)" in interrupted["final_output"]
    assert "Trials: 3 ok." in (folder / "report" / "index.html").read_text()


# --- 6: a checkpoint damaged under a running study; its tables cut short afterwards ---------

# Two identical cells side by side (the `run` label is not a training setting): the
# victim's checkpoint gets a flipped byte (which torch.load alone would read as if
# nothing happened), then its worker is killed, so Tune restores it from that file.
DAMAGE_STUDY = """\
fixed: {train_size: 12000, test_size: 200, batch_size: 32, epochs: 3, optimizer: sgd, model: cnn_small, channels: [8, 8], lr: 0.05}
grid:
  run: [{name: victim}, {name: reference}]
max_failures: 2
"""


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("damaged")
    folder, command, cli = side_by_side(tmp, "damaged", DAMAGE_STUDY)
    try:
        def state_of(name: str) -> Path:
            return folder / "tune" / name / "checkpoint_000000" / "state.pt"

        name, rows = when_reported(cli, folder, "victim", lambda name, rows: len(rows) == 1 and state_of(name).exists(),
                              "the victim's first checkpoint")
        state = state_of(name)
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state.write_bytes(bytes(data))
        os.kill(rows[0]["pid"], signal.SIGKILL)
        code = cli.wait(240)
    finally:
        cli.cleanup()
    tables = {table: pd.read_parquet(folder / table) for table in ("history.parquet", "trials.parquet")}
    for table in tables:  # a copy or a full disk cut them short
        path = folder / table
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    rerun = subprocess.run([sys.executable, "-m", "sweeps", *command], cwd=REPO, capture_output=True, text=True,
                           timeout=240)
    return {"folder": folder, "code": code, "output": cli.output(), "victim": name, "tables": tables, "rerun": rerun}


def test_a_damaged_checkpoint_is_found_and_its_trial_starts_over_without_doubled_rows(damaged):
    output = damaged["output"]
    assert damaged["code"] == 0, output[-3000:]
    lines = [line for line in output.splitlines() if "is damaged" in line]
    assert len(lines) == 1 and re.search(r"checkpoint checkpoint_000000 is damaged \(.*state\.pt: record .* fails its "
                                         r"CRC check \(corrupted\)\); the trial starts over from step 0", lines[0]), lines
    history = pd.read_parquet(damaged["folder"] / "history.parquet")
    runs = {run: history[history["run"] == run].reset_index(drop=True) for run in ("victim", "reference")}
    assert runs["victim"]["epoch"].tolist() == [1, 2, 3]  # the abandoned attempt's epoch 1 is not doubled
    assert "started_over" not in history.columns
    # Started over from step 0 with the same config and seed: it ends exactly like the reference
    # (resuming from the flipped weights would not).
    pd.testing.assert_frame_equal(runs["victim"][["epoch", *EXACT]], runs["reference"][["epoch", *EXACT]],
                                  check_exact=True)


def test_tables_cut_short_are_rebuilt_by_the_same_command(damaged):
    rerun = damaged["rerun"]
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "damaged: all 2 trials are done; rebuilding the report" in rerun.stdout
    for table, before in damaged["tables"].items():
        pd.testing.assert_frame_equal(pd.read_parquet(damaged["folder"] / table), before)
