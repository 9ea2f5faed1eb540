"""What `submit` sends: the entrypoint, the upload's exclusions and the job's
environment; bad addresses and specs outside the checkout are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps import submit
from sweeps.schema import load_study
from trainables.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def test_entrypoint_runs_the_spec_from_the_uploaded_checkout():
    command = submit.entrypoint(REPO / "sweeps" / "wd.yaml", "smoke", "/shared/results", fresh=True)
    assert command == "python -m sweeps run sweeps/wd.yaml --results /shared/results --profile smoke --fresh"


def test_upload_leaves_out_bulk_and_passes_the_commit(monkeypatch):
    monkeypatch.setenv("GENSWEEP_GIT_COMMIT", "abc123")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t0ken")
    env = submit.runtime_env()
    assert env["working_dir"] == str(REPO)
    assert {".venv/", "results/", ".git/", "data/*/raw/*-ubyte"} <= set(env["excludes"])
    assert env["env_vars"]["GENSWEEP_GIT_COMMIT"] == "abc123"
    assert env["env_vars"]["MKL_THREADING_LAYER"] == "GNU" and env["env_vars"]["RAY_AUTH_MODE"] == "token"


def test_results_default_to_an_absolute_path_and_uris_pass_through(tmp_path, monkeypatch):
    monkeypatch.delenv("GENSWEEP_RESULTS", raising=False)
    assert submit.study_results(None) == str(REPO / "results")
    assert submit.study_results("s3://bucket/gs") == "s3://bucket/gs"
    monkeypatch.chdir(tmp_path)
    assert submit.study_results("shared") == str(tmp_path / "shared")


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert submit.auth_token() == "from-file"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.auth_token() == "from-env"


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:6379", "the job server's URL is needed"),
])
def test_a_gcs_address_is_not_a_job_server(address, message):
    with pytest.raises(UserError, match=message):
        submit.job_address(address)


def test_a_spec_outside_the_checkout_is_refused(tmp_path):
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO / "sweeps" / "wd.yaml").read_text())
    study = load_study(outside, "smoke")
    with pytest.raises(UserError, match="must live inside this checkout"):
        submit.submit(study, outside, address="http://127.0.0.1:9", storage=None, wait=False)
