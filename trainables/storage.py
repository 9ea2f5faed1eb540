"""Study folders that live in cloud storage (s3://, gs://, any pyarrow filesystem URI).

Tune writes trial results straight to the URI (its `storage_path`); gensweep's own
files (study.json, the Parquet tables and the report) are written to a local copy
and uploaded. A local or shared-filesystem path needs none of this.

    with local_copy("s3://bucket/results/wd") as folder:   # download
        write_report(folder)                               # work locally
                                                           # upload what changed
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from trainables.errors import UserError


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def join(location: str, *parts: str) -> str:
    return "/".join([str(location).rstrip("/"), *parts])


def writable_ancestor(path: Path) -> Path:
    """The nearest existing folder at or above a local `path` (a study folder may not
    exist yet); refuses, in one line, one that is a file or cannot be written: the
    folder that holds study folders must take new ones."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{probe}: not a folder; --results (or the spec's storage) names the folder that holds "
                        f"study folders")
    if not os.access(probe, os.W_OK):
        raise UserError(f"{probe}: results folder is not writable")
    return probe


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # unknown scheme, missing credentials, unreachable endpoint
        raise UserError(f"{uri}: cannot open this storage location ({str(exc).splitlines()[0]})") from None


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    fs, path = _filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(uri: str, text: str) -> None:
    fs, path = _filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:  # object stores make this atomic
        stream.write(text.encode())


def pull(uri: str, local: Path) -> None:
    """Download the folder at `uri` into `local` (recursively)."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def push_changed(local: Path, uri: str, since: float) -> list[str]:
    """Upload every file under `local` modified after `since` (epoch seconds) to the
    same relative path under `uri`; returns the relative paths uploaded."""
    import pyarrow.fs as pafs

    fs, base = _filesystem(uri)
    local_fs = pafs.LocalFileSystem()
    uploaded = []
    for file in sorted(p for p in Path(local).rglob("*") if p.is_file() and p.stat().st_mtime > since):
        relative = file.relative_to(local).as_posix()
        target = f"{base.rstrip('/')}/{relative}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(file), target, source_filesystem=local_fs, destination_filesystem=fs)
        uploaded.append(relative)
    return uploaded


@contextmanager
def local_copy(location: str | os.PathLike) -> Iterator[Path]:
    """The study folder as a local path. For a URI: a temporary download, whose new
    or changed files are uploaded back when the block ends without error."""
    if not is_uri(location):
        yield Path(location)
        return
    uri = str(location)
    if not exists(uri):
        raise UserError(f"{uri}: no such study folder")
    folder = Path(tempfile.mkdtemp(prefix="gensweep-study-"))
    try:
        pull(uri, folder)
        # mtimes of downloaded files are "now": anything written after this is ours.
        pulled_at = time.time() + 0.01
        time.sleep(0.02)
        yield folder
        push_changed(folder, uri, pulled_at)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
