"""Progress and cancellation as plain callables, so the CLI, widgets and tests can all drive
long work the same way (a progress bar, a napari progress, a list in a test)."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import Cancelled

#: ``progress(done, total, what)``: called after each unit of work.
ProgressCallback = Callable[[int, int, str], None]


class CancelToken:
    """Set from any thread; the worker checks it between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def report(progress: Optional[ProgressCallback], done: int, total: int, what: str) -> None:
    if progress is not None:
        progress(done, total, what)


def check_cancel(cancel: Optional[CancelToken]) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()
