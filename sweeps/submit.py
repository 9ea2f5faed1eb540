"""Send a study to a Ray cluster as a Ray job, and follow, list or stop jobs.

    python -m sweeps submit sweeps/wd.yaml --profile quick --address http://HEAD:8265
    python -m sweeps jobs [--address ...]            # recent jobs and their status
    python -m sweeps logs JOB_ID [--follow]
    python -m sweeps stop JOB_ID

The job runs `python -m sweeps run SPEC ...` on the head node, with this checkout
uploaded as its working directory (minus the virtualenv, results, git history and
unpacked data: Ray refuses uploads over 100 MiB). The head's `python` must have
gensweep's dependencies installed (the Docker image does). Results go to `--storage`:
a folder every node can write (on one machine, any absolute path; on a cluster, a
shared filesystem) or a cloud URI (s3://, gs://); by default this checkout's
`results/` folder, which only a head on this machine can reach.

Ray 2.60's job server wants a token. It is read from RAY_AUTH_TOKEN, the file named
by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (what `ray start` writes on the head).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from sweeps.workerenv import WORKER_ENV
from sweeps.schema import Study
from trainables import plugins
from trainables.storage import is_uri
from trainables.errors import UserError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Bulk that must not travel with the job: Ray caps the working_dir upload at 100 MiB.
UPLOAD_EXCLUDES = [".venv/", "results/", ".git/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/",
                   "data/*/raw/*-ubyte", "data/FashionMNIST/", "bench/results*", "docker/*.tar"]
# What the job's processes need in their environment. MKL_THREADING_LAYER: a Tune
# driver importing torch inside a job otherwise died with "Intel oneMKL FATAL ERROR".
JOB_ENV = {"MKL_THREADING_LAYER": "GNU", "PYTHONUNBUFFERED": "1", "RAY_AIR_NEW_OUTPUT": "0", **WORKER_ENV}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def job_address(address: str | None) -> str:
    """The job server's URL: --address, else RAY_ADDRESS when it is an http URL, else
    a head on this machine."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if "://" not in address:
        raise UserError(f"--address {address!r}: the job server's URL is needed, e.g. http://HEAD:8265 "
                        "(the dashboard port, not the GCS port 6379)")
    return address


def auth_token() -> str | None:
    """The cluster token, from where Ray itself looks for it."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def client(address: str | None):
    """A JobSubmissionClient, with auth problems and unreachable servers as one line."""
    from ray.job_submission import JobSubmissionClient

    url = job_address(address)
    token = auth_token()
    # Sent as a header rather than through RAY_AUTH_MODE, which Ray reads once per
    # process; a server without auth ignores it.
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except Exception as exc:  # Ray raises ConnectionError, AuthenticationError, RuntimeError
        raise UserError(_explain(url, exc)) from None


def _explain(url: str, exc: Exception) -> str:
    text = str(exc)
    if type(exc).__name__ == "AuthenticationError":
        if "Missing" in text or "no authentication token" in text:
            return (f"{url}: the Ray job server requires a token and none was found; set RAY_AUTH_TOKEN or "
                    f"copy the head's ~/.ray/auth_token to this machine")
        return f"{url}: the Ray job server rejected the token (RAY_AUTH_TOKEN or ~/.ray/auth_token is not this cluster's)"
    if "onnect" in text or isinstance(exc, ConnectionError):
        return f"{url}: no Ray job server answers there (is the cluster up? `make cluster-up` starts one here)"
    return f"{url}: {text.splitlines()[0] if text else type(exc).__name__}"


def _call(url: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(_explain(url, exc)) from None


def study_results(storage: str | None) -> str:
    """Where the job writes its study folder: a URI as given, a path made absolute
    (the job runs in a temporary copy of this checkout, so a relative path would
    vanish with it)."""
    if storage is None:
        return str((REPO / os.environ.get("GENSWEEP_RESULTS", "results")).resolve())
    return storage if is_uri(storage) else str(Path(storage).resolve())


def entrypoint(spec: Path, profile: str | None, results: str, fresh: bool, pack: int | None = None) -> str:
    spec_in_job = Path(spec).resolve()
    try:
        spec_in_job = spec_in_job.relative_to(REPO)
    except ValueError:
        raise UserError(f"{spec}: a submitted spec must live inside this checkout ({REPO}), which is what the job uploads") from None
    parts = ["python", "-m", "sweeps", "run", str(spec_in_job), "--results", results]
    if profile:
        parts += ["--profile", profile]
    if fresh:
        parts.append("--fresh")
    if pack is not None:
        parts += ["--pack", str(pack)]
    return " ".join(parts)


def runtime_env(plugin_package: Path | None = None) -> dict:
    """The job's runtime_env: this checkout as its working dir, and (`plugin_package`)
    a package of the spec's plugin files that live outside it (py_modules)."""
    from sweeps.provenance import git_commit

    # The upload has no .git: the job records the commit that was submitted.
    env = {**JOB_ENV, "GENSWEEP_GIT_COMMIT": git_commit()}
    if auth_token():
        env["RAY_AUTH_MODE"] = "token"  # the job's driver talks to the cluster with the head's token
    extra = {}
    if plugin_package is not None:
        env[plugins.JOB_PLUGINS_ENV] = plugin_package.name
        extra["py_modules"] = [str(plugin_package)]
    return {"working_dir": str(REPO), "excludes": UPLOAD_EXCLUDES, "env_vars": env, **extra}


def submit(study: Study, spec: Path, *, address: str | None, storage: str | None, fresh: bool = False,
           wait: bool = True, pack: int | None = None, accept_plugin_change: bool = False) -> int:
    """Submit the study as a Ray job; with `wait`, stream its logs and return its
    exit status (0 when the job succeeded)."""
    results = study_results(storage)
    command = entrypoint(spec, study.profile, results, fresh, pack)  # bad input fails before any network call
    if accept_plugin_change:
        command += " --accept-plugin-change"
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="gensweep-submit-") as staging:
        name = plugins.bundle(study.plugins, REPO, Path(staging))  # plugins from outside the checkout travel too
        if name is not None:
            print(f"plugins from outside {REPO} travel as the job's py_module {name}", flush=True)
        return _submit(jobs, address, study, command, results, wait, Path(staging) / name if name else None)


def _submit(jobs, address: str | None, study: Study, command: str, results: str, wait: bool,
            plugin_package: Path | None) -> int:
    url = job_address(address)
    # Ray logs each packaging step and warns about excludes we set on purpose.
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env").setLevel(logging.ERROR)
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # sets INFO on itself
    print(f"uploading {REPO} as the job's working dir (without {', '.join(UPLOAD_EXCLUDES[:4])}, ...)", flush=True)
    job_id = _call(url, jobs.submit_job, entrypoint=command, runtime_env=runtime_env(plugin_package),
                   metadata={"gensweep_study": study.study_name})
    print(f"submitted {study.study_name} as Ray job {job_id} to {url}", flush=True)
    print(f"  entrypoint: {command}", flush=True)
    print(f"  results:    {results}/{study.study_name}", flush=True)
    if not wait:
        print(f"  follow with: python -m sweeps logs {job_id} --follow --address {url}", flush=True)
        return 0
    return follow(jobs, url, job_id)


def follow(jobs, url: str, job_id: str) -> int:
    """Print the job's logs as they come, then its final status."""

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on. Stop it with: python -m sweeps stop {job_id} --address {url}")
        return 130
    except Exception:
        pass  # the log stream closes when the job ends; the status below says how
    status = wait_until_done(jobs, url, job_id)
    info = _call(url, jobs.get_job_info, job_id)
    print(f"job {job_id}: {status}" + (f" ({info.message})" if status != "SUCCEEDED" and info.message else ""))
    return 0 if status == "SUCCEEDED" else 1


def wait_until_done(jobs, url: str, job_id: str, timeout: float | None = None, poll: float = 1.0) -> str:
    started = time.monotonic()
    while True:
        status = str(_call(url, jobs.get_job_status, job_id)).split(".")[-1]
        if status in TERMINAL:
            return status
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f} s")
        time.sleep(poll)


def list_jobs(address: str | None) -> int:
    jobs = client(address)
    url = job_address(address)
    rows = sorted(_call(url, jobs.list_jobs), key=lambda j: j.start_time or 0)
    if not rows:
        print(f"no jobs on {url}")
    for job in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1000))
        study = (job.metadata or {}).get("gensweep_study", "-")
        print(f"{job.submission_id or job.job_id:<28} {str(job.status).split('.')[-1]:<10} {started}  {study}")
    return 0


def show_logs(address: str | None, job_id: str, keep_following: bool) -> int:
    jobs = client(address)
    url = job_address(address)
    if keep_following:
        return follow(jobs, url, job_id)
    sys.stdout.write(_call(url, jobs.get_job_logs, job_id))
    return 0


def stop(address: str | None, job_id: str) -> int:
    jobs = client(address)
    url = job_address(address)
    stopped = _call(url, jobs.stop_job, job_id)
    print(f"job {job_id}: " + ("stop requested" if stopped else "was not running"))
    return 0
