"""A tiny decorator registry (timm-style): explicit dicts, duplicate names raise."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from hpcdd.errors import ConfigError, brief

T = TypeVar("T")


def unknown_name(kind: str, name: object, names: Iterable[str]) -> str:
    """``unknown method 'dmm'; did you mean 'dm'? (choose one of: ...)``: the closest registered
    name (difflib) when one is close enough."""
    names = list(names)
    close = difflib.get_close_matches(name, names, n=1) if isinstance(name, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {brief(name)}{hint} (choose one of: {', '.join(names)})"


class Registry(Generic[T]):
    """Maps names to objects. ``kind`` names the registry in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"duplicate {self.kind} name {name!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(unknown_name(self.kind, name, sorted(self._items))) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
