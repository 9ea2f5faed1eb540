"""The Docker image's files agree with the project: the Dockerfile, .dockerignore, the
lock, docker/docker.mk, the KubeRay RayJob and the Ray cluster-launcher config.

    .venv/bin/python -m pytest -q tests/test_docker_configs.py

Fast and without a container engine: files are parsed, the cluster config goes
through Ray's own validation, and make targets are dry-run. `make test-docker`
builds and runs the image for real.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from sweeps.schema import load_study

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
DEPENDENCIES = {Requirement(r).name: Requirement(r) for r in PROJECT["dependencies"]}


def exact_pin(name: str) -> str:
    (spec,) = DEPENDENCIES[name].specifier
    assert spec.operator == "==", f"pyproject pins {name} with {spec}"
    return spec.version


RAY_VERSION = exact_pin("ray")


def lock() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"lock line not pinned: {line!r}"
            assert name not in pins, f"{name} twice in the lock"
            pins[name] = version
    return pins


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (DOCKER / "Dockerfile").read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def image_matches(image: str) -> bool:
    """`gensweep:VERSION`, with or without a registry in front."""
    return image == f"gensweep:{VERSION}" or image.endswith(f"/gensweep:{VERSION}")


# --- lock -------------------------------------------------------------------

def test_lock_pins_the_stack_exactly():
    pins = lock()
    assert (pins["torch"], pins["torchvision"], pins["ray"]) == ("2.14.1", "0.29.1", "2.60.0")
    for name in ("torch", "torchvision", "ray"):
        assert pins[name] == exact_pin(name)


def test_lock_satisfies_every_project_dependency():
    pins = lock()
    for name, req in DEPENDENCIES.items():
        assert name in pins, f"{name} (pyproject) missing from docker/requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}, pyproject wants {req}"
    # ray[default,tune]'s extras came along (the job server and Tune need them).
    assert {"aiohttp", "pyarrow", "tensorboardx"} <= set(pins)


# --- Dockerfile -------------------------------------------------------------

def test_dockerfile_base_image_arg_defaults_to_official_slim_python():
    steps = dockerfile()
    first_from = next(i for i, (op, _) in enumerate(steps) if op == "FROM")
    args_before = dict(a.split("=", 1) for op, a in steps[:first_from] if op == "ARG" and "=" in a)
    assert args_before["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert steps[first_from][1] == "${BASE_IMAGE}"
    assert SpecifierSet(PROJECT["requires-python"]).contains("3.11")  # the default base image's Python


def _pythons_the_dockerfile_accepts() -> set[str]:
    """The minor versions the venv step's `assert (3, A) <= sys.version_info[:2] <= (3, B)` lets through."""
    run_text = " ".join(a for op, a in dockerfile() if op == "RUN")
    m = re.search(r"assert \(3, (\d+)\) <= sys\.version_info\[:2\] <= \(3, (\d+)\)", run_text)
    assert m, "the Dockerfile no longer checks the venv's Python version"
    return {f"3.{minor}" for minor in range(int(m[1]), int(m[2]) + 1)}


def test_dockerfile_accepts_the_pythons_gensweep_supports():
    accepted = _pythons_the_dockerfile_accepts()
    assert accepted == {"3.11", "3.12", "3.13"}
    # Every Python pyproject allows builds (while pyproject still says <3.12 this is a
    # subset; once it says <3.14 the two are equal).
    allowed = {f"3.{minor}" for minor in range(6, 20) if SpecifierSet(PROJECT["requires-python"]).contains(f"3.{minor}")}
    assert allowed and allowed <= accepted, f"pyproject allows {sorted(allowed)}, the Dockerfile {sorted(accepted)}"


def test_dockerfile_takes_torch_variant_from_torch_index_url_and_all_else_from_pips_index():
    steps = dockerfile()
    # The CUDA variant's build argument exists and defaults to the locked torch.
    assert ("ARG", 'TORCH_INDEX_URL=""') in steps
    run_text = " ".join(" ".join(a.split()) for op, a in steps if op == "RUN")
    # An extra index on top of pip's own, never a replacement for it.
    assert 'pip install --extra-index-url "$TORCH_INDEX_URL" $(grep -E \'^(torch|torchvision)==\' /tmp/requirements.lock)' in run_text
    assert "--index-url" not in run_text.replace("--extra-index-url", "")
    assert "'+' not in v(n)" in run_text  # a torch from the default index instead fails the build


# A public package host, written out (pip, apt and debootstrap take theirs from the
# machine's configuration).
PACKAGE_HOSTS = re.compile(r"pytorch\.org|debian\.org|pypi\.org|files\.pythonhosted|https?://[A-Za-z0-9.-]+\.[a-z]{2,}")


@pytest.mark.parametrize("name", ["Dockerfile", "build-base-image.sh", "docker.mk", "test-docker.sh",
                                  "containers.conf", "lock.py", "requirements.lock"])
def test_docker_files_name_no_package_host(name):
    text = (DOCKER / name).read_text()
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if PACKAGE_HOSTS.search(line)]
    assert not hits, f"docker/{name} names a package host: {hits}"


def test_dockerfile_entrypoint_user_venv_and_data():
    steps = dockerfile()
    entrypoints = [json.loads(a) for op, a in steps if op == "ENTRYPOINT"]
    assert entrypoints == [["python", "-m", "sweeps"]]
    users = [a for op, a in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    run_text = " ".join(a for op, a in steps if op == "RUN")
    assert f"useradd --create-home --uid \"$USER_UID\" --shell /bin/bash {users[-1]}" in run_text
    env = " ".join(a for op, a in steps if op == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env and f"HOME=/home/{users[-1]}" in env
    copies = [a for op, a in steps if op == "COPY"]
    assert any(a.endswith("docker/requirements.lock /tmp/requirements.lock") for a in copies)
    assert "pip install -r /tmp/requirements.lock" in run_text
    assert any("data/MNIST /app/data/MNIST" in a for a in copies)
    assert "MNIST('/app/data', train=t, download=True)" in run_text  # md5 checked and unpacked at build time
    assert ("ENV", "GENSWEEP_DATA=/app/data") in [(op, part) for op, a in steps for part in a.split()]
    for package in ("sweeps", "trainables", "analysis"):
        assert any(a.endswith(f"{package} /app/{package}") for a in copies)


# --- docker/build-base-image.sh: the Debian mirror ---------------------------

def _print_mirror(apt_dir: Path, mirror: str | None = None) -> subprocess.CompletedProcess:
    """The script's mirror detection alone (`--print-mirror`: no root, podman or
    debootstrap needed), reading apt sources from apt_dir instead of /etc/apt."""
    env = {k: v for k, v in os.environ.items() if k != "MIRROR"} | {"APT_SOURCES_DIR": str(apt_dir)}
    if mirror is not None:
        env["MIRROR"] = mirror
    return subprocess.run(["bash", str(DOCKER / "build-base-image.sh"), "--print-mirror"], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_base_image_script_without_mirror_or_apt_sources_asks_for_mirror(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "old.list.disabled").write_text("deb http://x.example.invalid/debian bookworm main\n")
    out = _print_mirror(tmp_path)
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "MIRROR" in lines[0], out.stderr
    # No folder at all: the same.
    out = _print_mirror(tmp_path / "missing")
    assert out.returncode != 0 and len(out.stderr.splitlines()) == 1 and "MIRROR" in out.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_base_image_script_takes_the_mirror_apt_uses(tmp_path):
    # One-line format: comments, deb-src, a third-party repository (its own component)
    # and the security archive are passed over; options in brackets are allowed.
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example.invalid/debian bookworm main\n"
        "deb-src http://src.example.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://vendor.example.invalid/linux/debian bookworm stable\n"
        "deb http://sec.example.invalid/debian-security bookworm-security main\n"
        "deb [ arch=amd64 ] http://one.example.invalid/debian bookworm main contrib\n")
    out = _print_mirror(tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (0, "http://one.example.invalid/debian\n", "")
    # MIRROR wins over apt's sources.
    assert _print_mirror(tmp_path, "http://given.example.invalid/debian").stdout == "http://given.example.invalid/debian\n"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_base_image_script_reads_deb822_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    # A third-party deb822 file sorting before debian.sources: its suite is not Debian's.
    (tmp_path / "sources.list.d" / "aaa-node.sources").write_text(
        "Types: deb\nURIs: https://node.example.invalid/node_20.x\nSuites: nodistro\nComponents: main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://sec.example.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://off.example.invalid/debian\nSuites: bookworm\n"
        "Components: main\nEnabled: no\n\n"
        "types: deb\nuris: http://deb822.example.invalid/debian\nsuites: bookworm bookworm-updates\ncomponents: main\n")
    out = _print_mirror(tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (0, "http://deb822.example.invalid/debian\n", "")


# --- .dockerignore ----------------------------------------------------------

def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
                        for part in re.split(r"(\*\*|\*|\?)", pattern))
        rules.append((negate, re.compile(regex.replace(".*/", "(.*/)?"))))
    return rules


def _excluded(path: str, rules) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or any
    of its parent folders."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_code_specs_lock_and_mnist_archives_only():
    rules = _ignore_rules()
    for path in ["sweeps/wd.yaml", "sweeps/__main__.py", "trainables/engine.py", "analysis/report.py",
                 "pyproject.toml", "README.md", "docker/requirements.lock",
                 "data/MNIST/raw/train-images-idx3-ubyte.gz", "data/MNIST/raw/t10k-labels-idx1-ubyte.gz"]:
        assert not _excluded(path, rules), f"{path} must reach the build"
    for path in [".venv/bin/python", "results/wd/trials.parquet", ".git/HEAD", "tests/test_e2e.py",
                 "data/MNIST/raw/train-images-idx3-ubyte", "data/FashionMNIST/raw/x", "docker/Dockerfile",
                 "sweeps/__pycache__/schema.cpython-311.pyc", "trainables/probes/__pycache__/x.pyc"]:
        assert _excluded(path, rules), f"{path} must stay out of the build context"


def test_build_context_is_small():
    rules = _ignore_rules()
    negated_roots = {r.pattern.split("/")[0] for neg, r in rules if neg}
    total = 0
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        # Prune excluded folders nothing re-includes (.venv, .git, results, ...).
        dirs[:] = [d for d in dirs if not (rel_root == "." and _excluded(d, rules) and d not in negated_roots)]
        for name in files:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if not _excluded(rel, rules):
                total += os.path.getsize(os.path.join(root, name))
    assert total < 40e6, f"build context {total / 1e6:.0f} MB"


# --- KubeRay ----------------------------------------------------------------

@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((DOCKER / "kuberay-rayjob.yaml").read_text())


def _pod_specs(job: dict) -> list[tuple[str, dict]]:
    cluster = job["spec"]["rayClusterSpec"]
    return [("head", cluster["headGroupSpec"]["template"]["spec"])] + [
        (group["groupName"], group["template"]["spec"]) for group in cluster["workerGroupSpecs"]]


def test_rayjob_image_ray_version_and_user(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION
    assert cluster["authOptions"] == {"mode": "token"}  # Ray 2.60's job server wants a token
    images = {c["image"] for _, pod in _pod_specs(rayjob) for c in pod["containers"]}
    assert len(images) == 1 and image_matches(images.pop())
    uid = next(a for op, a in dockerfile() if op == "ARG" and a.startswith("USER_UID=")).split("=")[1]
    for _, pod in _pod_specs(rayjob):
        assert pod["securityContext"]["runAsUser"] == int(uid)


def test_rayjob_entrypoint_runs_a_valid_spec_on_shared_storage(rayjob):
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "sweeps", "run"]
    spec = Path(argv[4])
    assert spec.parent == Path("/specs")  # the ConfigMap made from sweeps/
    study = load_study(REPO / "sweeps" / spec.name)
    assert study.spec.name
    storage = argv[argv.index("--storage") + 1]
    for group, pod in _pod_specs(rayjob):
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert storage in mounts, f"{group} pods do not mount {storage}"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[storage])
        assert volume["persistentVolumeClaim"]["claimName"] == "gensweep-results"
        assert "/dev/shm" in mounts


def test_rayjob_workers_have_gpus_and_head_runs_no_trials(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


# --- Ray cluster launcher ---------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((DOCKER / "cluster.yaml").read_text())


def test_cluster_config_passes_rays_own_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(dict(cluster)))
    with pytest.raises(Exception, match="head_node_typo"):
        validate_config(prepare_config({**cluster, "head_node_typo": "head"}))


def test_cluster_runs_the_image_as_a_gpu_ray_node(cluster):
    docker = cluster["docker"]
    assert image_matches(docker["image"])
    # The launcher runs `docker run ... IMAGE bash`: the sweeps entrypoint must go.
    assert '--entrypoint=""' in docker["run_options"] and "--gpus all" in docker["run_options"]
    assert "-e RAY_AUTH_MODE=token" in docker["run_options"]
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    setup = " ".join(cluster["setup_commands"] + cluster["head_setup_commands"] + cluster["worker_setup_commands"])
    assert not re.search(r"pip install[^;]*\bray\b", setup), "the image's Ray must be the one that runs"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("ray start" in c for c in cluster[key])
    assert "--num-cpus=0" in " ".join(cluster["head_start_ray_commands"])
    worker_types = [t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]]
    assert worker_types and all(t["node_config"]["InstanceType"][0] in "gp" for t in worker_types)  # GPU families


# --- docker/docker.mk -------------------------------------------------------

def _dry_run(*args: str) -> str:
    out = subprocess.run(["make", "-n", "--no-print-directory", "-f", "docker/docker.mk", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.replace("\\\n", " ").split())  # continuation lines joined, spaces normalized


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_targets_name_the_versioned_image_and_mount_results():
    build = _dry_run("docker-build", "ENGINE=docker")
    assert f"docker build -f docker/Dockerfile -t gensweep:{VERSION}" in build and "--build-arg GIT_COMMIT=" in build
    run = _dry_run("docker-run", "ENGINE=docker", "SPEC=sweeps/wd.yaml", "PROFILE=smoke", "RESULTS=/tmp/x",
                   "DOCKER_USER=1000:1000")
    assert "--user 1000:1000 -v /tmp/x:/results" in run
    # the spec's folder, so plugin files and .npz datasets beside the spec are there too
    assert f"-v {REPO}/sweeps:/specs:ro" in run and "run /specs/wd.yaml --profile smoke" in run
    assert f"gensweep:{VERSION} run /specs/wd.yaml --profile smoke --results /results" in run
    usage = subprocess.run(["make", "--no-print-directory", "-f", "docker/docker.mk", "docker-run", "ENGINE=docker"],
                           cwd=REPO, capture_output=True, text=True, timeout=30)
    assert usage.returncode != 0 and "usage: make docker-run SPEC=" in usage.stdout
