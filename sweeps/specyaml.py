"""YAML reading for specs: YAML 1.2 numbers, and line numbers in errors."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from trainables.errors import UserError


class SpecError(UserError):
    """A spec that cannot run, stated as `file: key.path: problem`."""


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-4` is a string; every ML config writes
    learning rates like that, so accept YAML 1.2 floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> object:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        tag = re.search(r"for the tag '([^']+)'", problem) if isinstance(exc, yaml.constructor.ConstructorError) else None
        if tag:  # e.g. !!python/object/apply: the safe loader builds no objects and runs no code
            raise SpecError(f"{path}: tag !!{tag.group(1).removeprefix('tag:yaml.org,2002:')} at {where} is not allowed; "
                            f"a spec holds plain data (mappings, lists, strings, numbers)") from None
        raise SpecError(f"{path}: malformed YAML at {where}: {problem}") from None
