"""One registry per kind (datasets, attacks, models, defenses).

Each entry is registered with one decorator and carries an optional settings
dataclass, so that the command line, presets and the bench grid can all read
and validate the settings of any entry without knowing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    key: str
    obj: T
    settings: type | None
    doc: str


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, key: str, settings: type | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            doc = (getattr(obj, "doc", None) or getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._entries[key] = Entry(key, obj, settings, doc[0] if doc else "")
            return obj

        return deco

    def entry(self, key: str) -> Entry[T]:
        _load_builtins()
        if key not in self._entries:
            raise UserError(
                f"unknown {self.kind} {key!r}; valid: {', '.join(sorted(self._entries))}"
            )
        return self._entries[key]

    def get(self, key: str) -> T:
        return self.entry(key).obj

    def keys(self) -> list[str]:
        _load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[k] for k in self.keys()]


datasets: Registry[Any] = Registry("dataset")
attacks: Registry[Any] = Registry("attack")
models: Registry[Any] = Registry("model")
defenses: Registry[Any] = Registry("defense")

_loaded = False


def _load_builtins() -> None:
    """Import every built-in module once so that its decorators run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    from . import attacks as a, data as d, defenses as f, models as m

    for pkg in (d, a, m, f):
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
