"""Security defaults, each tried for real: a spec with a Python object tag is refused
(one line, exit 2) and its command never runs; a spec string that looks like code
stays a string and fails validation as a wrong type; a checkpoint holding a pickled
object with a malicious __reduce__ is refused by `load_state` (weights_only=True)
and its payload never runs; the local cluster binds the dashboard/job server to
127.0.0.1 with token auth, and in-process Ray starts without a dashboard.

The live-cluster side (loopback-only listening sockets, requests without or with a
wrong token refused) is tested in tests/test_cluster.py; this file checks the
arguments and environment `cluster.up` starts nodes with, without starting Ray.

    .venv/bin/python -m pytest -q tests/test_security.py
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sweeps import cluster
from sweeps.schema import load_study
from sweeps.specyaml import SpecError, _Loader, read_yaml
from trainables.checkpoint import STATE_FILE, CheckpointError, load_state, save_state

REPO = Path(__file__).resolve().parent.parent

SPEC = """\
name: sec
family: classifier
fixed:
  model: mlp
  epochs: 1
  train_size: 64
  test_size: 64
  batch_size: 32
  lr: {lr}
grid:
  weight_decay: [0]
"""


# (a) YAML tags that would build objects or run code under an unsafe loader.
@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system",
                                 "!!python/name:os.system", "!!python/module:os"])
def test_python_tags_are_refused_and_never_run(tmp_path, tag):
    marker = tmp_path / "pwned"
    spec = tmp_path / "tagged.yaml"
    spec.write_text(SPEC.format(lr=f'{tag} ["touch {marker}"]'))
    with pytest.raises(SpecError) as err:
        read_yaml(spec)
    assert str(err.value).startswith(f"{spec}: tag {tag.split(':')[0]}") and "line 9" in str(err.value)
    assert "is not allowed" in str(err.value)
    assert not marker.exists()


def test_python_tag_through_the_cli_is_one_line_exit_2(tmp_path):
    marker = tmp_path / "pwned"
    spec = tmp_path / "tagged.yaml"
    spec.write_text(SPEC.format(lr=f'!!python/object/apply:os.system ["touch {marker}"]'))
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", str(spec), "--results", str(tmp_path / "results")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {spec}: tag !!python/object/apply:os.system at line 9, column 7 is not allowed; "
        f"a spec holds plain data (mappings, lists, strings, numbers)"]
    assert not marker.exists() and not (tmp_path / "results").exists()


def test_the_spec_loader_is_a_safe_loader():
    assert issubclass(_Loader, yaml.SafeLoader)
    assert not issubclass(_Loader, (yaml.FullLoader, yaml.UnsafeLoader))


# (b) No spec string is evaluated.
CODE = "__import__('os').system('touch {marker}')"


@pytest.mark.parametrize("key, expected", [
    ("lr", "fixed.lr: Input should be a valid number"),
    ("epochs", "fixed.epochs: Input should be a valid integer"),
    ("model", "fixed.model: unknown model"),
])
def test_code_in_a_spec_value_stays_a_string(tmp_path, key, expected):
    marker = tmp_path / "pwned"
    text = SPEC.format(lr=0.1)
    code = CODE.format(marker=marker)
    text = text.replace(f"  {key}: ", f"  {key}: \"{code}\"  # was: ", 1)
    spec = tmp_path / "code.yaml"
    spec.write_text(text)
    assert read_yaml(spec)["fixed"][key] == code  # a plain string
    with pytest.raises(SpecError) as err:
        load_study(spec)
    assert expected in str(err.value) and repr(code) in str(err.value)
    assert not marker.exists()


def test_code_in_a_free_text_field_is_kept_verbatim(tmp_path):
    marker = tmp_path / "pwned"
    code = CODE.format(marker=marker)
    spec = tmp_path / "described.yaml"
    spec.write_text(SPEC.format(lr=0.1) + f'description: "{code}"\n')
    study = load_study(spec)
    assert study.spec.description == code
    assert not marker.exists()


def _calls(tree: ast.AST):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


# The one place that runs code on purpose: the plugin files a spec names under
# `plugins:` (the user's own code; docs/own-experiments.md says that validating or
# running a spec runs them). Exactly these calls, nowhere else.
PLUGIN_LOADER = {"trainables/plugins.py": ["compile()", "exec()"]}


def test_no_code_path_evaluates_or_unpickles_input():
    """A static guard over the package sources: no eval/exec (but the plugin loader's),
    no pickle loads, every torch.load with weights_only=True, YAML only through the
    safe spec loader."""
    problems = []
    allowed = {f"{file}: {call}" for file, calls in PLUGIN_LOADER.items() for call in calls}
    for path in sorted(p for folder in ("sweeps", "trainables", "analysis", "gensweep")
                       for p in (REPO / folder).rglob("*.py")):
        for call in _calls(ast.parse(path.read_text())):
            func = call.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            keywords = {k.arg: k.value for k in call.keywords}
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            if isinstance(func, ast.Name) and name in ("eval", "exec", "compile"):
                if f"{path.relative_to(REPO)}: {name}()" in allowed:
                    allowed.discard(f"{path.relative_to(REPO)}: {name}()")
                    continue
                problems.append(f"{where}: {name}()")
            if owner in ("pickle", "cloudpickle", "dill") and name in ("load", "loads"):
                problems.append(f"{where}: {owner}.{name}()")
            if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
                loader = keywords.get("Loader")
                if not (isinstance(loader, ast.Name) and loader.id in ("_Loader", "SafeLoader", "CSafeLoader")):
                    problems.append(f"{where}: yaml.{name} without the safe loader")
            if owner == "torch" and name == "load":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner == "np" and name == "load":
                allow = keywords.get("allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
    assert not problems, problems
    assert not allowed, f"the plugin loader's exec/compile moved (update PLUGIN_LOADER): {allowed}"


# (c) Checkpoints are data, never code.
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    # What a tampered checkpoint looks like: torch's zip format, a pickle inside.
    torch.save({"epoch": 3, "model": {"w": torch.ones(2)}, "extra": _Payload(marker)}, folder / STATE_FILE)
    assert not marker.exists()
    for target in (folder, folder / STATE_FILE):
        # torch refuses the pickled object; load_state says so in one line naming the file
        with pytest.raises(CheckpointError, match=rf"^{folder / STATE_FILE}: unreadable \(UnpicklingError: Weights only "
                                                  r"load failed"):
            load_state(target)
    assert not marker.exists()
    # The same file with weights_only=False would run it: the test payload is live.
    torch.load(folder / STATE_FILE, weights_only=False)
    assert marker.exists()


def test_a_real_checkpoint_loads_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"epoch": 2, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "rng": torch.get_rng_state(), "history": [{"epoch": 1, "loss": 0.5}]}
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded["epoch"] == 2 and loaded["history"] == [{"epoch": 1, "loss": 0.5}]
    assert torch.equal(loaded["model"]["weight"], model.state_dict()["weight"])
    assert torch.equal(loaded["rng"], state["rng"])
    assert loaded["optimizer"]["param_groups"][0]["momentum"] == 0.9


# (d) Ray binds to loopback with token auth; the in-process Ray has no dashboard.
class _FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_cluster_up_starts_nodes_on_loopback_with_token_auth(tmp_path, monkeypatch):
    started = []

    def fake_popen(args, **kwargs):
        started.append((args, kwargs))
        return _FakeProcess(4_000_000 + len(started))  # no such pid: nothing is signalled

    monkeypatch.setattr(cluster.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(cluster, "_wait_for_nodes", lambda *a: None)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    up = cluster.up(workers=1, cpus=1, state_dir=tmp_path, default_ports=False)
    cluster.down(tmp_path)  # nothing runs (no such pids); removes the nodes' temp dirs
    assert not any(Path(d).exists() for d in up.temp_dirs)
    assert len(started) == 2
    (head, head_kw), (worker, worker_kw) = started
    assert head[1:3] == ["start", "--block"] and "--head" in head

    def value(args: list[str], flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value(head, "--dashboard-host") == "127.0.0.1"  # dashboard + job server: loopback only
    assert value(head, "--node-ip-address") == "127.0.0.1" and value(worker, "--node-ip-address") == "127.0.0.1"
    assert value(worker, "--address") == up.gcs_address and up.gcs_address.startswith("127.0.0.1:")
    assert up.job_address.startswith("http://127.0.0.1:")
    for kwargs in (head_kw, worker_kw):
        assert kwargs["env"]["RAY_AUTH_MODE"] == "token"
        assert kwargs["start_new_session"] is True  # `down` stops exactly this process group
    assert cluster._node_env()["RAY_AUTH_MODE"] == "token"


def test_in_process_ray_starts_without_a_dashboard(monkeypatch):
    import ray

    from sweeps import runner

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    runner.init_ray(None)
    assert len(calls) == 1 and calls[0]["include_dashboard"] is False
    assert calls[0]["address"] is None  # no --address: a local Ray in this process
