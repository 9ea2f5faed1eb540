"""One writer per study folder: a run holds the study's lock while it uses the folder.

    with studylock.hold(folder, what="gensweep run sweeps/wd.yaml --profile quick"):
        ...  # everything the run does to the folder
    studylock.holder(folder)  # who holds it, without taking it (for `gensweep status`)

A second run of the same study stops at once with a UserError (the CLI's one
`error: ...` line, exit 2) that names the holder, and changes nothing in the folder.

- A local (or shared-filesystem) folder: an OS lock (`flock`) on `LOCK_FILE` in the
  folder, which holds one JSON line naming the holder (host, pid, what, since). The
  kernel drops a flock when its process dies, so a killed run's lock is free at
  once; the next run says whose lock it takes over. A clean exit (error or Ctrl-C
  included) deletes the file, and the folders `hold` created if they stayed empty:
  a run that wrote nothing leaves no trace. On NFS, Linux emulates flock with POSIX
  locks (NFSv4 lock leases); other shared filesystems may need a mount option.
- A folder in object storage (a URI; object stores have no locks): a lease
  `LEASE_FILE` with the same fields plus `heartbeat`, rewritten every HEARTBEAT_S
  (30 s) by a daemon thread and deleted on exit. A lease is stale, and taken over,
  when its heartbeat is older than STALE_AFTER_S (180 s; clocks of different hosts
  are assumed to agree to well within that), or when it names a process on this
  host that is gone (or whose pid now belongs to a newer process). See `_take_lease`
  for what this guarantees.

The file names start with a dot and are not `tune*`, `report` or a table: nothing
that reads a study folder (trainables.contract's experiment and trial listings,
the planner, analysis) lists or mistakes them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from trainables import storage
from trainables.errors import UserError

LOCK_FILE = ".gensweep.lock"  # local folders: the flock'd file
LEASE_FILE = ".gensweep-lease.json"  # URI folders: the lease object
HEARTBEAT_S = 30.0  # seconds between a lease's refreshes
STALE_AFTER_S = 180.0  # seconds without a heartbeat after which a lease is taken over (6 missed beats)
SETTLE_S = 1.0  # seconds between writing a lease and reading it back (lets a racing writer land)
_READ_RETRIES = 10  # a busy lock's record may be a moment behind its flock: re-read 10 x 0.1 s

# Lock files this process holds (fd -> path): a forked child closes its copies (below).
_held: dict[int, Path] = {}


def _close_in_child() -> None:
    """After os.fork: drop the child's copies of the lock fds. A flock belongs to the
    open file description, so a forked child still holding a copy would keep the
    study locked after the run that took it died. (exec'd children, Ray's raylet
    and workers among them, never get the fd: Python opens fds non-inheritable,
    O_CLOEXEC, PEP 446; `hold` checks it.)"""
    for fd in list(_held):
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


@dataclass
class Lock:
    """A held study lock: its folder, the file (local) or lease (URI) that records
    it, and the record itself."""

    folder: Path | str
    path: Path | str
    record: dict
    lost: threading.Event = field(default_factory=threading.Event)  # a lease another run took over


def _now() -> float:
    """Epoch seconds (tests move the clock by replacing this)."""
    return time.time()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _proc_start(pid: int) -> str | None:
    """`<boot id>:<start time in clock ticks since boot>` of a live process (Linux
    /proc), or None: with the host and pid it names one process, even after its pid
    is reused or the machine rebooted."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return f"{boot}:{fields[19]}"  # field 22 of proc(5); fields[0] is field 3


def _my_record(what: str) -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "what": what, "since": _iso(_now()),
            "proc_start": _proc_start(pid)}


def _is_gone(record: dict) -> bool:
    """Whether a record's process, on this host, has ended (or its pid now belongs to
    another process). False for another host's process: this host cannot tell."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    pid = record["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True  # a zombie: ended, not reaped yet
    except OSError:
        pass
    then, now = record.get("proc_start"), _proc_start(pid)
    return bool(then and now and then != now)


def _who(record: dict) -> str:
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, {record.get('what', '?')}, "
            f"since {record.get('since', '?')}")


def _takeover_note(folder: Path | str, record: dict, why: str) -> None:
    print(f"{folder}: taking over the study lock of pid {record.get('pid', '?')} on host {record.get('host', '?')} "
          f"(since {record.get('since', '?')}; {why})", flush=True)


def _busy(folder: Path | str, record: dict | None, extra: str = "") -> UserError:
    who = _who(record) if record else "its holder has not recorded itself yet"
    return UserError(f"{folder}: another run is using this study ({who}{extra}); wait for it to end, or stop it")


@contextmanager
def hold(folder: Path | str, *, what: str = "gensweep run") -> Iterator[Lock]:
    """Hold the study lock of `folder` (a local path or a storage URI) for the block;
    creates the folder (and its parents) when missing. Raises UserError, changing
    nothing in the folder, when another run holds it."""
    if storage.is_uri(folder):
        lock, stop, beat = _take_lease(str(folder), what)
        try:
            yield lock
        finally:
            _drop_lease(lock, stop, beat)
    else:
        lock, fd, created = _take_local(Path(folder), what)
        try:
            yield lock
        finally:
            _drop_local(lock, fd, created)


def holder(folder: Path | str) -> dict | None:
    """The record of the run holding `folder`'s lock ({host, pid, what, since, ...};
    a lease adds `heartbeat`; None values while a new holder has not written it yet),
    or None when it is free. Takes nothing; a local probe holds a shared flock for a
    few microseconds, during which a starting run would be told the study is busy."""
    if storage.is_uri(folder):
        lease = _read_lease(storage.join(str(folder), LEASE_FILE))
        return lease if lease is not None and _stale_reason(lease) is None else None
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # held; a holder that has not written its record yet is still a holder
        return _read_fd(fd, wait=True) or {"host": None, "pid": None, "what": None, "since": None}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Local folders: flock


def _make_dirs(folder: Path) -> list[Path]:
    """Create `folder` and missing parents; returns those created, outermost first.
    An unusable parent is refused as the planner refuses it (storage.writable_ancestor)."""
    existing, missing = storage.writable_ancestor(folder), []
    probe = folder
    while probe != existing:
        missing.append(probe)
        probe = probe.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:  # another run made it meanwhile
            pass
    return created


def _read_fd(fd: int, wait: bool = False) -> dict | None:
    """The JSON record at the start of a lock file, or None (empty or unreadable).
    `wait`: a holder writes its record just after taking the flock, so an empty file
    is read again for up to a second."""
    for _ in range(_READ_RETRIES if wait else 1):
        text = os.pread(fd, 65536, 0).decode(errors="replace").strip()
        if text:
            try:
                record = json.loads(text.splitlines()[0])
                return record if isinstance(record, dict) else None
            except ValueError:
                return None
        if wait:
            time.sleep(0.1)
    return None


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`: a releasing run deletes the
    lock file, and a flock on a deleted file locks nothing anyone else can see."""
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _take_local(folder: Path, what: str) -> tuple[Lock, int, list[Path]]:
    created = _make_dirs(folder)
    path = folder / LOCK_FILE
    for _ in range(20):  # retries only while other runs delete the lock file under us
        try:
            # No O_TRUNC: a busy lock's file must stay as it is. Non-inheritable (PEP 446).
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a releasing run removed the folder it had created
            created += _make_dirs(folder)
            continue
        except OSError as exc:
            _remove_dirs(created)
            raise UserError(f"{path}: cannot open the study lock ({exc.strerror})") from None
        assert not os.get_inheritable(fd)  # exec'd children (Ray) must not keep the lock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            record = _read_fd(fd, wait=True) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{path}: cannot lock the study ({exc.strerror})") from None
            raise _busy(folder, record) from None
        if not _same_file(fd, path):
            os.close(fd)
            continue
        _held[fd] = path
        before = _read_fd(fd)
        if before is not None:  # its holder died without releasing: the kernel freed the flock
            _takeover_note(folder, before, "that process is gone")
        record = _my_record(what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return Lock(folder, path, record), fd, created
    _remove_dirs(created)
    raise UserError(f"{path}: the study lock kept disappearing; is another run starting and stopping?")


def _drop_local(lock: Lock, fd: int, created: list[Path]) -> None:
    if _held.pop(fd, None) is None:  # a forked child's copy: not ours to release
        return
    if _same_file(fd, Path(lock.path)):
        try:
            os.unlink(lock.path)  # while still locked: the next run creates a new file
        except OSError:  # the folder turned read-only: an empty record reads as released
            os.ftruncate(fd, 0)
    os.close(fd)
    _remove_dirs(created)


def _remove_dirs(created: list[Path]) -> None:
    """Remove the folders `hold` created, innermost first, where still empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:  # the run wrote into it, or another run uses it now
            return


# ---------------------------------------------------------------------------
# URI folders: a lease with a heartbeat


def _read_lease(uri: str) -> dict | None:
    """The lease at `uri`, None when there is none, {} when it stays unreadable for
    a second (stale: see _stale_reason)."""
    for _ in range(_READ_RETRIES):
        if not storage.exists(uri):
            return None
        try:
            lease = json.loads(storage.read_text(uri))
            return lease if isinstance(lease, dict) else {}
        except (ValueError, OSError):  # deleted or replaced as we read: look again
            time.sleep(0.1)
    return {}


def _stale_reason(lease: dict) -> str | None:
    """Why a lease no longer holds (the note's words), or None while it holds."""
    if _is_gone(lease):
        return "that process is gone"
    try:
        beat = _epoch(lease["heartbeat"])
    except (KeyError, TypeError, ValueError):
        return "its lease is unreadable"
    if _now() - beat > STALE_AFTER_S:
        return f"no heartbeat since {lease['heartbeat']}, over {STALE_AFTER_S:g} s ago"
    return None


def _busy_lease(folder: str, lease: dict) -> UserError:
    return _busy(folder, lease, f", last heartbeat {lease.get('heartbeat', '?')}; a lease without a heartbeat for "
                                f"{STALE_AFTER_S:g} s is taken over")


def _write_lease(uri: str, lease: dict) -> None:
    """Write the lease with a new heartbeat, whole: an object store's PUT replaces an
    object at once, but a local file (file://) is truncated and rewritten, so there
    it goes to a temporary file first, renamed over the lease. The temporary file
    sits beside the study folder, not in it: a download of the folder (storage.pull)
    must not list a file that is gone a moment later."""
    import pyarrow.fs as pafs

    text = json.dumps({**lease, "heartbeat": _iso(_now())}) + "\n"
    fs, path = storage._filesystem(uri)  # storage has no atomic write or delete (yet)
    if not isinstance(fs, pafs.LocalFileSystem):
        storage.write_text(uri, text)
        return
    study = Path(path).parent
    tmp = study.parent / f".{study.name}{LEASE_FILE}.{lease['token']}.tmp"
    study.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    os.replace(tmp, path)


def _take_lease(folder: str, what: str) -> tuple[Lock, threading.Event, threading.Thread]:
    """Write the lease unless a live one is there, wait SETTLE_S, read it back.

    The read-back catches a run that wrote its lease between our write and our read
    (the later writer wins, the earlier one stops with the busy error). It does not
    make two starts at the same moment safe: two runs that each read "no lease",
    write, and read back before the other's write is visible both go on. Stores with
    strong read-after-write consistency (S3 since 2020, GCS, Azure, file://) make that
    window about SETTLE_S wide; on an eventually consistent store a read may also
    miss a live lease for as long as the store lags. A true mutual exclusion needs a
    conditional write (create-if-absent), which pyarrow's filesystems do not offer."""
    uri = storage.join(folder, LEASE_FILE)
    before = _read_lease(uri)
    why = _stale_reason(before) if before is not None else None
    if before is not None and why is None:
        raise _busy_lease(folder, before)
    record = {**_my_record(what), "token": uuid.uuid4().hex}
    _write_lease(uri, record)
    time.sleep(SETTLE_S)
    back = _read_lease(uri) or {}
    if back.get("token") != record["token"]:
        raise _busy_lease(folder, back)
    if before is not None:
        _takeover_note(folder, before, why)
    lock = Lock(folder, uri, record)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, stop), name="gensweep-study-lease", daemon=True)
    beat.start()
    return lock, stop, beat


def _heartbeat(lock: Lock, stop: threading.Event) -> None:
    """Rewrite the lease every HEARTBEAT_S until `stop`; stop for good (and say so)
    if another run took it over, rather than overwrite that run's lease."""
    while not stop.wait(HEARTBEAT_S):
        try:
            now = _read_lease(str(lock.path)) or {}
            if now.get("token") != lock.record["token"]:
                lock.lost.set()
                print(f"warning: {lock.folder}: another run took over this study's lease ({_who(now)}); "
                      f"two runs may now write the study", file=sys.stderr, flush=True)
                return
            _write_lease(str(lock.path), lock.record)
        except Exception:  # a storage hiccup: try again at the next beat (6 may fail before the lease is stale)
            continue


def _drop_lease(lock: Lock, stop: threading.Event, beat: threading.Thread) -> None:
    stop.set()
    beat.join(timeout=10)
    if lock.lost.is_set():
        return
    try:
        if (_read_lease(str(lock.path)) or {}).get("token") == lock.record["token"]:
            fs, path = storage._filesystem(str(lock.path))
            fs.delete_file(path)
    except OSError:  # unreachable storage: the lease goes stale in STALE_AFTER_S
        pass
