"""A small name -> object registry shared by models, datasets, methods and metrics."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sanitas.errors import UnknownNameError

T = TypeVar("T")


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Maps short names to objects.

    Lookups ignore case and treat ``-`` and ``_`` alike, so ``input_x_gradient`` and
    ``input-x-gradient`` name the same thing. An unknown name raises
    :class:`UnknownNameError` listing the valid names and the closest matches.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._canonical: dict[str, str] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(target: T) -> T:
            for key in (name, *aliases):
                norm = _normalize(key)
                if norm in self._canonical and self._canonical[norm] != name:
                    raise ValueError(f"{self.kind} name {key!r} is already registered")
                self._canonical[norm] = name
            self._items[name] = target
            self._aliases[name] = tuple(dict.fromkeys((*self._aliases.get(name, ()), *aliases)))
            return target

        if obj is None:
            return _add
        return _add(obj)

    def canonical(self, name: str) -> str:
        norm = _normalize(name)
        if norm not in self._canonical:
            valid = ", ".join(self.names())
            close = difflib.get_close_matches(norm, list(self._canonical), n=5, cutoff=0.6)
            close = list(dict.fromkeys(self._canonical[c] for c in close))[:3]
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {valid}.")
        return self._canonical[norm]

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _normalize(name) in self._canonical

    def names(self) -> list[str]:
        return list(self._items)

    def aliases(self, name: str) -> list[str]:
        """The other names registered for ``name`` (as they were registered)."""
        canonical = self.canonical(name)
        return [a for a in self._aliases.get(canonical, ()) if _normalize(a) != _normalize(canonical)]

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def __len__(self) -> int:
        return len(self._items)


def describe(obj: Callable | object) -> str:
    """First paragraph of an object's docstring on one line, for listings."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""
