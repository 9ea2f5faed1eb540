"""One writer per study folder (sweeps/studylock.py): a second holder, in another
process, is refused with one line naming the first and changes nothing; a killed
holder's lock is taken over with a one-line note; a clean release leaves nothing.
The same for a lease in URI storage (file://, the pyarrow code that serves s3://),
with the limits lowered instead of waiting 180 s. No Ray: the holders are small
python processes.

    .venv/bin/python -m pytest -q tests/test_studylock.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweeps import studylock
from trainables.errors import UserError

REPO = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()

# Takes the lock of argv[1] through the module, says so in argv[2] (written whole,
# then renamed), and sleeps. argv[3]: JSON options: "set" module constants,
# "child": start an exec'd child that inherits what it can (close_fds=False),
# "fork": fork a child that sleeps, "sleep": seconds to hold (default 600).
HOLDER = """
import json, os, subprocess, sys, time
from pathlib import Path
from sweeps import studylock
folder, ready, options = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
for name, value in options.get("set", {}).items():
    setattr(studylock, name, value)
with studylock.hold(folder, what="lock test holder") as lock:
    child = None
    if options.get("child"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], close_fds=False).pid
    if options.get("fork"):
        child = os.fork()
        if child == 0:
            time.sleep(600)
            os._exit(0)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "child": child, "record": lock.record}))
    os.replace(tmp, ready)
    time.sleep(options.get("sleep", 600))
"""


class Holder:
    """A process holding a study lock, and its info ({"pid", "child", "record"})."""

    def __init__(self, proc: subprocess.Popen, info: dict) -> None:
        self.proc, self.info = proc, info
        self.pid, self.record = info["pid"], info["record"]

    def kill(self) -> None:
        """SIGKILL, and reap it (an unreaped zombie would still answer kill(pid, 0))."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def start_holder(tmp_path):
    started: list[Holder] = []

    def start(folder: Path | str, **options) -> Holder:
        ready = tmp_path / f"ready-{len(started)}.json"
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ready), json.dumps(options)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"the holder exited {proc.returncode}:\n{out}\n{err}")
            assert time.monotonic() < deadline, "the holder did not take the lock within 60 s"
            time.sleep(0.05)
        holder = Holder(proc, json.loads(ready.read_text()))
        started.append(holder)
        return holder

    yield start
    for holder in started:  # each by its own pid: the holder, then the child it started
        if holder.proc.poll() is None:
            holder.kill()
        if holder.info.get("child"):
            try:
                os.kill(holder.info["child"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def snapshot(folder: Path) -> dict:
    """Every path under `folder`: bytes and mtime (what 'untouched' compares)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir", p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def a_resumable_folder(folder: Path) -> None:
    """A study folder with an earlier run's results in it."""
    (folder / "tune" / "abc123").mkdir(parents=True)
    (folder / "study.json").write_text('{"spec": {}}\n')
    (folder / "tune" / "abc123" / "result.json").write_text('{"epoch": 1}\n')


def assert_names(message: str, holder: Holder) -> None:
    assert f"pid {holder.pid} on host {HOST}" in message, message
    assert f"since {holder.record['since']}" in message, message
    assert "lock test holder" in message, message


# ---------------------------------------------------------------------------
# Local folders: flock


def test_a_second_holder_is_refused_naming_the_first_and_changes_nothing(tmp_path, start_holder, capsys):
    folder = tmp_path / "results" / "wd-quick"
    folder.mkdir(parents=True)
    a_resumable_folder(folder)
    first = start_holder(folder)
    before = snapshot(folder)
    time.sleep(0.02)  # a rewrite in the same instant would keep the mtime: give it time to show
    with pytest.raises(UserError) as refused:
        with studylock.hold(folder):
            raise AssertionError("took a lock another process holds")
    message = str(refused.value)
    assert message.startswith(f"{folder}: another run is using this study (")
    assert message.endswith("; wait for it to end, or stop it") and "\n" not in message
    assert_names(message, first)
    assert snapshot(folder) == before
    assert studylock.holder(folder)["pid"] == first.pid
    assert capsys.readouterr().out == ""


def test_a_killed_holders_lock_is_taken_over_with_a_note(tmp_path, start_holder, capsys):
    """Killed with a child still running (an exec'd child that inherited all it could,
    as Ray's processes would be): the child must not keep the study locked."""
    folder = tmp_path / "wd-quick"
    first = start_holder(folder, child=True)
    first.kill()
    os.kill(first.info["child"], 0)  # the orphan lives on
    assert studylock.holder(folder) is None
    with studylock.hold(folder, what="the next run") as lock:
        assert lock.record["pid"] == os.getpid()
        assert studylock.holder(folder)["what"] == "the next run"
    out = capsys.readouterr().out
    assert out == (f"{folder}: taking over the study lock of pid {first.pid} on host {HOST} "
                   f"(since {first.record['since']}; that process is gone)\n")


def test_a_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path, start_holder):
    folder = tmp_path / "wd-quick"
    first = start_holder(folder, fork=True)
    first.kill()
    os.kill(first.info["child"], 0)
    with studylock.hold(folder):
        pass


def test_a_clean_release_leaves_the_folder_as_it_was_and_the_next_run_says_nothing(tmp_path, start_holder, capsys):
    folder = tmp_path / "wd-quick"
    folder.mkdir()
    a_resumable_folder(folder)
    files = {k: v[0] for k, v in snapshot(folder).items()}
    first = start_holder(folder, sleep=0)
    assert first.proc.wait(timeout=30) == 0
    with pytest.raises(RuntimeError):  # an error in the block is a clean exit too
        with studylock.hold(folder):
            raise RuntimeError("the run failed")
    with studylock.hold(folder):
        assert (folder / studylock.LOCK_FILE).exists()
    assert {k: v[0] for k, v in snapshot(folder).items()} == files
    assert capsys.readouterr().out == ""


def test_a_run_that_wrote_nothing_leaves_no_folder(tmp_path):
    with studylock.hold(tmp_path / "results" / "new-study"):
        assert (tmp_path / "results" / "new-study" / studylock.LOCK_FILE).exists()
    assert list(tmp_path.iterdir()) == []
    with studylock.hold(tmp_path / "results" / "new-study"):
        (tmp_path / "results" / "new-study" / "study.json").write_text("{}")
    assert [p.name for p in (tmp_path / "results" / "new-study").iterdir()] == ["study.json"]


def test_a_results_path_through_a_file_is_the_planners_error(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(UserError, match=f"^{tmp_path}/keep.txt: not a folder; "):
        with studylock.hold(tmp_path / "keep.txt" / "study"):
            pass


def test_the_lock_fd_is_not_inherited(tmp_path):
    with studylock.hold(tmp_path / "s"):
        fds = list(studylock._held)
        assert len(fds) == 1 and not os.get_inheritable(fds[0])
    assert studylock._held == {}


# ---------------------------------------------------------------------------
# URI folders: a lease


@pytest.fixture
def quick_lease(monkeypatch):
    """No settle wait, and a heartbeat that does not fire during a test unless asked."""
    monkeypatch.setattr(studylock, "SETTLE_S", 0.0)
    return {"SETTLE_S": 0.0}


def lease_of(folder: Path) -> dict:
    return json.loads((folder / studylock.LEASE_FILE).read_text())


def test_a_live_lease_is_refused_naming_its_holder_and_changes_nothing(tmp_path, start_holder, quick_lease, capsys):
    folder = tmp_path / "bucket" / "results" / "wd-quick"
    folder.mkdir(parents=True)
    a_resumable_folder(folder)
    uri = f"file://{folder}"
    first = start_holder(uri, set=quick_lease)
    before = snapshot(folder)
    time.sleep(0.02)
    with pytest.raises(UserError) as refused:
        with studylock.hold(uri):
            raise AssertionError("took a live lease")
    message = str(refused.value)
    assert message.startswith(f"{uri}: another run is using this study (") and "\n" not in message
    assert_names(message, first)
    assert f"without a heartbeat for {studylock.STALE_AFTER_S:g} s is taken over" in message
    assert snapshot(folder) == before
    assert studylock.holder(uri)["pid"] == first.pid
    assert capsys.readouterr().out == ""


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over(tmp_path, start_holder, quick_lease, capsys):
    folder = tmp_path / "wd-quick"
    uri = f"file://{folder}"
    first = start_holder(uri, set=quick_lease)
    first.kill()  # its heartbeat is fresh: only the pid says it is gone
    assert studylock.holder(uri) is None
    with studylock.hold(uri) as lock:
        assert lease_of(folder)["token"] == lock.record["token"]
    assert capsys.readouterr().out == (f"{uri}: taking over the study lock of pid {first.pid} on host {HOST} "
                                       f"(since {first.record['since']}; that process is gone)\n")
    assert not (folder / studylock.LEASE_FILE).exists()


def test_a_lease_without_a_recent_heartbeat_is_taken_over(tmp_path, start_holder, quick_lease, monkeypatch, capsys):
    folder = tmp_path / "wd-quick"
    uri = f"file://{folder}"
    first = start_holder(uri, set=quick_lease)  # alive, beating every 30 s
    monkeypatch.setattr(studylock, "STALE_AFTER_S", 5.0)
    monkeypatch.setattr(studylock, "_now", lambda: time.time() + 6.0)  # 6 s later, no beat since
    beat = lease_of(folder)["heartbeat"]
    with studylock.hold(uri):
        pass
    assert capsys.readouterr().out == (f"{uri}: taking over the study lock of pid {first.pid} on host {HOST} "
                                       f"(since {first.record['since']}; no heartbeat since {beat}, over 5 s ago)\n")


def test_a_lease_whose_pid_is_now_another_process_is_taken_over(tmp_path, quick_lease, capsys):
    """Same host, live pid, but not the process that wrote the lease (pid reuse)."""
    folder = tmp_path / "wd-quick"
    folder.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        now = studylock._iso(time.time())
        (folder / studylock.LEASE_FILE).write_text(json.dumps(
            {"host": HOST, "pid": other.pid, "what": "w", "since": now, "heartbeat": now,
             "proc_start": "another-boot:1", "token": "t"}))
        assert studylock.holder(f"file://{folder}") is None
        with studylock.hold(f"file://{folder}"):
            pass
    finally:
        other.kill()
        other.wait()
    assert f"pid {other.pid} on host {HOST}" in capsys.readouterr().out


def test_a_run_whose_lease_is_overwritten_while_it_settles_stops_and_leaves_it(tmp_path, quick_lease, monkeypatch):
    """Two runs racing: the other one's lease lands between this run's write and its
    read-back, so this one stops with the busy error and leaves the other's lease."""
    folder = tmp_path / "wd-quick"
    uri = f"file://{folder}"
    now = studylock._iso(time.time())
    racer = {"host": "other-host", "pid": 4242, "what": "the racer", "since": now, "token": "racer"}
    write = studylock._write_lease

    def write_then_race(where: str, lease: dict) -> None:
        write(where, lease)
        write(where, racer)

    monkeypatch.setattr(studylock, "_write_lease", write_then_race)
    with pytest.raises(UserError, match=f"another run is using this study \\(pid 4242 on host other-host, the racer, "
                                        f"since {now}, last heartbeat "):
        with studylock.hold(uri):
            raise AssertionError("went on with a lease that is not its own")
    assert lease_of(folder)["token"] == "racer"


def test_the_heartbeat_refreshes_the_lease_and_a_clean_release_deletes_it(tmp_path, quick_lease, monkeypatch, capsys):
    folder = tmp_path / "wd-quick"
    monkeypatch.setattr(studylock, "HEARTBEAT_S", 0.1)
    with studylock.hold(f"file://{folder}"):
        first = lease_of(folder)
        deadline = time.monotonic() + 5
        while lease_of(folder)["heartbeat"] == first["heartbeat"]:  # whole seconds: within ~1 s
            assert time.monotonic() < deadline, "no heartbeat in 5 s"
            time.sleep(0.05)
        assert lease_of(folder)["since"] == first["since"]
        assert [p.name for p in folder.iterdir()] == [studylock.LEASE_FILE]  # written whole, from beside the folder
    assert not (folder / studylock.LEASE_FILE).exists()
    with studylock.hold(f"file://{folder}"):
        pass
    assert capsys.readouterr().out == ""


def test_a_lease_taken_over_meanwhile_is_left_to_its_new_holder(tmp_path, quick_lease, monkeypatch, capsys):
    folder = tmp_path / "wd-quick"
    monkeypatch.setattr(studylock, "HEARTBEAT_S", 0.05)
    with studylock.hold(f"file://{folder}") as lock:
        theirs = {**lease_of(folder), "token": "theirs", "pid": 1}
        for _ in range(20):  # a beat in flight may overwrite it once: write again until seen
            (folder / studylock.LEASE_FILE).write_text(json.dumps(theirs))
            if lock.lost.wait(0.5):
                break
        assert lock.lost.is_set()
    assert lease_of(folder)["token"] == "theirs"
    assert "another run took over this study's lease" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The CLI


@pytest.mark.study
def test_cli_run_of_a_locked_study_is_one_error_line_exit_2_and_changes_nothing(tmp_path, start_holder):
    """`gensweep run` of a study another run holds. The data folder is empty and the
    network unreachable: if the lock were taken after the data is loaded (or not at
    all), the run fails there, with another message, instead of training."""
    spec = {"name": "lockcli", "family": "classifier", "description": "study lock test",
            "fixed": {"dataset": "mnist", "model": "mlp", "epochs": 1, "train_size": 64, "test_size": 64,
                      "batch_size": 32, "lr": 0.05},
            "grid": {"weight_decay": [0, 0.01]}, "seeds": [0]}
    (tmp_path / "lockcli.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    results = tmp_path / "results"
    folder = results.resolve() / "lockcli"  # the runner's study folder: results/<name>
    results.mkdir()
    (results / "keep.txt").write_text("an earlier study's file\n")
    first = start_holder(folder)  # creates the study folder: a first run that has just started
    before = snapshot(results)
    (tmp_path / "data").mkdir()
    offline = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    env = {**{k: v for k, v in os.environ.items() if k != "GENSWEEP_RESULTS"}, **offline,
           "GENSWEEP_DATA": str(tmp_path / "data"), "NO_PROXY": "", "no_proxy": ""}
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", str(tmp_path / "lockcli.yaml"),
                           "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}: another run is using this study ("), proc.stderr
    assert_names(lines[0], first)
    assert "starting" not in proc.stdout and "resuming" not in proc.stdout, proc.stdout
    assert snapshot(results) == before
