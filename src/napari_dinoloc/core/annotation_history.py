"""Undo and redo for the annotation store: the states before its last changes, each named.

A change runs inside ``_change(what)``: the state before it is kept, the store is saved after it,
and a change (or save) that fails puts memory back as it was, so memory and file always agree.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Optional

#: Changes the store can undo.
HISTORY_DEPTH = 200


@dataclass
class Snapshot:
    """The class list and annotations before a change, and what the change was (for 'Undo: ...')."""

    what: str
    classes: list
    cells: dict


class UndoHistory:
    """Mixed into a store with ``classes`` (list), ``cells`` (dict) of dataclasses, ``save()`` and
    the lists ``_undo`` and ``_redo``."""

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo_text(self) -> str:
        """What Undo would undo ('' when nothing)."""
        return self._undo[-1].what if self._undo else ""

    def redo_text(self) -> str:
        return self._redo[-1].what if self._redo else ""

    def undo(self) -> Optional[str]:
        """Go back one change (saved at once); returns what was undone, None when there was nothing."""
        return self._step(self._undo, self._redo)

    def redo(self) -> Optional[str]:
        """Do again the last change undone; returns what was redone, None when there was nothing."""
        return self._step(self._redo, self._undo)

    def _step(self, source: list[Snapshot], target: list[Snapshot]) -> Optional[str]:
        if not source:
            return None
        snapshot = source[-1]
        current = self._snapshot(snapshot.what)
        self._restore(snapshot)
        try:
            self.save()
        except BaseException:
            self._restore(current)
            raise
        source.pop()
        target.append(current)
        return snapshot.what

    @contextmanager
    def _change(self, what: str):
        """Record the state before a change, save after it; a failed change or save leaves the
        store (memory and file) as it was. A change that changes nothing is not recorded."""
        before = self._snapshot(what)
        try:
            yield
            if self.classes == before.classes and self.cells == before.cells:
                return
            self.save()
        except BaseException:
            self._restore(before)
            raise
        self._undo.append(before)
        del self._undo[:-HISTORY_DEPTH]
        self._redo.clear()

    def _snapshot(self, what: str) -> Snapshot:
        return Snapshot(what, [replace(c) for c in self.classes], {k: replace(c) for k, c in self.cells.items()})

    def _restore(self, snapshot: Snapshot) -> None:
        self.classes = [replace(c) for c in snapshot.classes]
        self.cells = {k: replace(c) for k, c in snapshot.cells.items()}
