"""One registry shape for everything chosen by name: backbones, channel strategies, heads.

A ``Registry`` is a read-only mapping name -> entry (``in``, iteration, ``.values()``, ``.get(name)``
giving None work as on a dict), plus ``lookup`` that raises a ``DinolocError`` listing the known names, ``names()`` for argparse
``choices=`` and combo boxes, and the ``default`` name (from ``defaults.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, Iterator, TypeVar

from .errors import DinolocError

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    def __init__(self, what: str, default: str | None = None):
        self.what = what  # e.g. "backbone": used in the error message
        self.default = default
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        del self._entries[name]

    def lookup(self, name: str) -> T:
        """The entry called ``name``, or a DinolocError that lists the known names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise DinolocError(f"Unknown {self.what} {name!r}: choose one of {', '.join(self._entries)}.") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __delitem__(self, name: str) -> None:  # tests register temporary entries and remove them
        self.unregister(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self._entries)})"
