"""Study folders in storage given as a URI (here file://, through the same pyarrow
filesystem code that serves s3:// and gs://): the run writes there, a rerun resumes
from there, and `python -m analysis report URI` rebuilds and uploads the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from trainables import storage

pytestmark = pytest.mark.study  # runs studies on Ray: left out of `make test-fast`

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_a_study_in_uri_storage_runs_resumes_and_reports(tmp_path):
    uri = f"file://{tmp_path}/bucket/results"
    first = cli("-m", "sweeps", "run", "sweeps/wd.yaml", "--profile", "smoke", "--storage", uri)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    folder = tmp_path / "bucket" / "results" / "wd-smoke"
    assert {p.name for p in folder.iterdir()} >= {"study.json", "tune", "history.parquet", "trials.parquet", "report"}
    assert f"report: {uri}/wd-smoke/report/index.html" in first.stdout
    assert len(pd.read_parquet(folder / "trials.parquet")) == 2

    again = cli("-m", "sweeps", "run", "sweeps/wd.yaml", "--profile", "smoke", "--storage", uri)
    assert again.returncode == 0 and "resuming" in again.stdout
    assert "1/2 done" not in again.stdout  # nothing retrained

    (folder / "history.parquet").unlink()
    report = cli("-m", "analysis", "report", f"{uri}/wd-smoke")
    assert report.returncode == 0, report.stderr
    assert (folder / "history.parquet").exists() and f"{uri}/wd-smoke/report" in report.stdout


def test_a_missing_uri_study_is_one_line(tmp_path):
    proc = cli("-m", "analysis", "report", f"file://{tmp_path}/nothing-here")
    assert proc.returncode == 2 and proc.stderr.strip().endswith("no such study folder")


def test_push_uploads_only_what_changed(tmp_path):
    remote = tmp_path / "remote"
    (remote / "tune").mkdir(parents=True)
    (remote / "tune" / "result.json").write_text("{}")
    (remote / "study.json").write_text("{}")
    with storage.local_copy(f"file://{remote}") as local:
        assert (local / "tune" / "result.json").read_text() == "{}"
        (local / "report").mkdir()
        (local / "report" / "index.html").write_text("<html>")
        (local / "study.json").unlink()  # deletions are not propagated: storage only gains files
    assert (remote / "report" / "index.html").read_text() == "<html>" and (remote / "study.json").exists()
