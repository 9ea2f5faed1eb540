"""Plugins: a user's own Python files (or importable modules) that add models,
datasets, probes, families and figure kinds through gensweep's public registries
(`gensweep.register_model`, ...). A spec names them under `plugins:`:

    plugins: [my_models.py, ../shared/probes.py, some_installed.module]

A path (it ends in `.py` or holds a `/`) is relative to the spec's folder; anything
else is a module name to import. A plugin is code: validating or running a spec
runs its plugins.

The driver reads each file once (`resolve`) and imports it (`activate`); the file's
text travels to every trial process with the trainable and is executed there from
that text, so a trial runs exactly the code the driver hashed, on any node of a
cluster. A module name is imported by name everywhere (it must be installed on
every node). Each plugin's sha256 goes into the study record and into every trial's
results (`plugin_sha256`), so results never mix two versions of the code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
import traceback
import types
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trainables.errors import UserError


class PluginError(UserError):
    """A plugin that cannot be read or imported, stated as `file:line: problem`."""


@dataclass(frozen=True)
class Plugin:
    entry: str  # as the spec writes it
    path: str  # the file (absolute), also for a module name
    sha256: str
    source: str | None  # a file plugin's text (None: a module, imported by name)

    @property
    def module_name(self) -> str:
        """Where a file plugin lives in sys.modules: its stem, so classes it defines
        pickle by a readable name; the hash keeps two files of one name apart."""
        if self.source is None:
            return self.entry
        return f"gensweep_plugin_{Path(self.path).stem}_{self.sha256[:8]}"

    def record(self) -> dict:
        """What the study record and provenance keep."""
        return {"plugin": self.entry, "path": self.path, "sha256": self.sha256}


# The plugin file being imported, and an object unique to this import of it:
# registries name the file as the origin of what it adds, and let a new version of
# a file replace what its older version added (not a duplicate), while one import
# adding a name twice still is.
_IMPORTING: ContextVar[tuple[str, object] | None] = ContextVar("gensweep_plugin_importing", default=None)
# (module name) of every plugin imported in this process; a worker process runs
# many trials and imports each version of a plugin once.
_LOADED: set[str] = set()
# The plugins of the trial (or study) this process is running now.
_ACTIVE: list[Plugin] = []


def importing() -> tuple[str, object] | None:
    """(plugin file, this import's token) while a plugin is being imported, else None."""
    return _IMPORTING.get()


def is_path(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


# Set by `gensweep submit` in a job's environment: the name of a package (Ray
# runtime_env py_modules) holding the spec's plugin files that live outside the
# uploaded checkout, with a manifest {entry as the spec writes it: file name}.
JOB_PLUGINS_ENV = "GENSWEEP_JOB_PLUGINS"
MANIFEST = "manifest.json"


def resolve(entries: list[str], base_dir: Path) -> list[Plugin]:
    """Read the plugins a spec names (paths relative to `base_dir`). Raises PluginError."""
    plugins = []
    shipped = _job_plugins()
    for entry in entries:
        if is_path(entry):
            path = shipped[entry] if entry in shipped else (Path(base_dir) / entry).resolve()
            try:
                raw = path.read_bytes()
                text = raw.decode()
            except FileNotFoundError:
                raise PluginError(f"{path}: no such plugin file (plugins: {entry})") from None
            except IsADirectoryError:
                raise PluginError(f"{path}: is a folder; a plugin is a .py file or a module name") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise PluginError(f"{path}: cannot read plugin ({getattr(exc, 'strerror', None) or exc})") from None
            plugins.append(Plugin(entry, str(path), _sha256(raw), text))
            continue
        try:
            found = importlib.util.find_spec(entry)
        except (ImportError, ValueError) as exc:
            raise PluginError(f"{entry}: cannot find plugin module ({exc})") from None
        if found is None or not found.origin or not Path(found.origin).is_file():
            raise PluginError(f"{entry}: no such plugin module (a file plugin is a path ending in .py, "
                              f"relative to the spec's folder)")
        plugins.append(Plugin(entry, found.origin, _sha256(Path(found.origin).read_bytes()), None))
    return plugins


def _job_plugins() -> dict[str, Path]:
    """entry -> file, for the plugins a submitted job brought along (else {})."""
    import json
    import os

    package = os.environ.get(JOB_PLUGINS_ENV)
    if not package:
        return {}
    try:
        folder = Path(importlib.import_module(package).__path__[0])
        manifest = json.loads((folder / MANIFEST).read_text())
    except (ImportError, OSError, ValueError) as exc:
        raise PluginError(f"{JOB_PLUGINS_ENV}={package}: the job's plugin files did not arrive ({exc})") from None
    return {entry: folder / name for entry, name in manifest.items()}


def bundle(plugins: list[Plugin], inside: Path, folder: Path) -> str | None:
    """Copy the file plugins that are not under `inside` (the checkout a job
    uploads) into a new package under `folder`, with the manifest `resolve` reads;
    returns the package's name, or None when every plugin is inside."""
    import json

    outside = [p for p in plugins if p.source is not None and not Path(p.path).is_relative_to(inside)]
    if not outside:
        return None
    name = "gensweep_job_plugins_" + _sha256("".join(p.sha256 for p in outside).encode())[:12]
    package = Path(folder) / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""Plugin files a gensweep job brought along (see trainables/plugins.py)."""\n')
    manifest = {}
    for i, plugin in enumerate(outside):
        manifest[plugin.entry] = f"p{i}_{Path(plugin.path).name}"
        (package / manifest[plugin.entry]).write_text(plugin.source)
    (package / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return name


def activate(plugins: list[Plugin]) -> None:
    """Import the plugins (each version once per process) and make them the ones
    `provenance` reports. Raises PluginError naming the file and line."""
    for plugin in plugins:
        if plugin.module_name not in _LOADED:
            _import(plugin)
            _LOADED.add(plugin.module_name)
    _ACTIVE[:] = plugins


def active() -> list[Plugin]:
    return list(_ACTIVE)


def provenance() -> str:
    """The active plugins as `name=sha256, ...` (a results column): '' without any."""
    return ", ".join(f"{Path(p.path).name}={p.sha256}" for p in _ACTIVE)


def _import(plugin: Plugin) -> None:
    with _importing(plugin.path):
        try:
            if plugin.source is None:
                importlib.import_module(plugin.entry)
                return
            code = compile(plugin.source, plugin.path, "exec")
            module = types.ModuleType(plugin.module_name)
            module.__file__ = plugin.path
            sys.modules[plugin.module_name] = module
            folder = str(Path(plugin.path).parent)
            if Path(folder).is_dir() and folder not in sys.path:
                sys.path.append(folder)  # a plugin may import a helper module beside it
            exec(code, module.__dict__)
        except SyntaxError as exc:
            sys.modules.pop(plugin.module_name, None)
            raise PluginError(f"{exc.filename or plugin.path}:{exc.lineno}: syntax error: {exc.msg}") from None
        except PluginError:
            raise
        except Exception as exc:
            sys.modules.pop(plugin.module_name, None)
            raise PluginError(f"{where(exc, plugin.path)}: importing the plugin raised {describe(exc)}") from None


@contextlib.contextmanager
def _importing(path: str) -> Iterator[None]:
    token = _IMPORTING.set((path, object()))
    try:
        yield
    finally:
        _IMPORTING.reset(token)


def where(exc: BaseException, default: str) -> str:
    """`file:line` of the innermost frame of `exc`'s traceback that is in a plugin
    file (the user's code), else `default`."""
    files = {p.path for p in _ACTIVE} | ({importing()[0]} if importing() else set())
    if default.endswith(".py"):
        files.add(default)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename in files:
            return f"{frame.filename}:{frame.lineno}"
    return default


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
