"""A named registry with checked names, shared by the task and backend seams.

Names are what users type in YAML and on the command line, so they are checked when registered (lower
case, digits and ``_``; no silent replacement of a registered entry) and an unknown name is a
:class:`~qatune.errors.ConfigError` listing what is available, like the method registry.
"""

from __future__ import annotations

import re
from typing import Callable, Generic, TypeVar

from qatune.errors import ConfigError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """``register(name, factory)``; ``get(name)`` builds (once) and returns the entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[[], T]] = {}
        self._aliases: dict[str, str] = {}
        self._built: dict[str, T] = {}

    def register(self, name: str, factory: Callable[[], T], aliases: tuple[str, ...] = (),
                 replace: bool = False) -> None:
        """Add ``name`` (built lazily by ``factory``); ``replace=True`` swaps an entry on purpose (tests)."""
        for key in (name, *aliases):
            if not _NAME.match(key):
                raise ValueError(f"{self.kind} name '{key}' must be lower case letters, digits and _ "
                                 "(it is typed in YAML and on the command line)")
            if not replace and (key in self._factories or key in self._aliases):
                raise ValueError(f"{self.kind} '{key}' is already registered")
        self._factories[name] = factory
        self._built.pop(name, None)
        for alias in aliases:
            self._aliases[alias] = name

    def unregister(self, name: str) -> None:
        self._factories.pop(name, None)
        self._built.pop(name, None)
        for alias in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[alias]

    def names(self) -> list[str]:
        return list(self._factories)

    def canonical(self, name: str) -> str:
        key = self._aliases.get(name, name)
        if key not in self._factories:
            raise ConfigError(f"unknown {self.kind} '{name}'. Available: {', '.join(self.names())}")
        return key

    def get(self, name: str) -> T:
        key = self.canonical(name)
        if key not in self._built:
            self._built[key] = self._factories[key]()
        return self._built[key]
