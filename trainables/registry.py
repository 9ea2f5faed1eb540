"""Name -> thing registries (models, datasets, families, probes, figure kinds). The
built-ins and plugins (trainables/plugins.py) fill the same registries. A duplicate
name is an error naming both files: two modules silently replacing each other's
entries is a bug."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

_REPO = Path(__file__).resolve().parent.parent


class Registry(dict, Generic[T]):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._origins: dict[str, tuple[str, object]] = {}  # name -> (file, import token)

    def add(self, name: str, item: T, origin: str | None = None) -> T:
        """Register `item` under `name`. `origin` is the file that defines it (default:
        the plugin being imported, else the module `item` comes from)."""
        from trainables import plugins

        importing = plugins.importing()
        if importing is not None and not _called_from(importing[0]):
            importing = None  # a module the plugin imports (gensweep's own) registering its built-ins
        where = (importing[0], importing[1]) if importing else (origin or origin_of(item), None)
        if name in self:
            before = self._origins.get(name, ("?", None))
            # A new version of the same plugin file replaces what the old one added.
            reload = importing is not None and before[0] == where[0] and before[1] is not where[1]
            if not reload:
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {shown_path(before[0])} and by "
                                 f"{shown_path(where[0])}; rename one")
        self[name] = item
        self._origins[name] = where
        return item

    def origin(self, name: str) -> str:
        """The file that registered `name`."""
        return self._origins.get(name, ("?", None))[0]

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda item: self.add(name, item)


def _called_from(path: str) -> bool:
    """Whether the file `path` made this registration: its frame is on the stack
    before any import machinery (an `import` inside it runs other modules' code)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name == path:
            return True
        if name.startswith("<frozen importlib"):
            return False
        frame = frame.f_back
    return False


def origin_of(item: object) -> str:
    """The source file of a function, method or class, else of the first one a
    dataclass holds (a Family's `validate`, a model entry's builder, a dataset's
    `load`), else of a callable object's class."""
    held = list(getattr(item, "__dict__", {}).values())
    for candidate in (item, *held, *(type(c) for c in (item, *held) if callable(c))):
        try:
            return inspect.getsourcefile(candidate) or "?"
        except TypeError:
            continue
    return "?"


def shown_path(path: str) -> str:
    """A repository file relative to the checkout (trainables/models.py), others as they are."""
    try:
        return str(Path(path).resolve().relative_to(_REPO))
    except ValueError:
        return path
