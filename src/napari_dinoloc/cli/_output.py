"""What the command line writes to the terminal besides results: a progress bar and the error line."""

from __future__ import annotations

import sys
import time


class TextProgress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    line_open = False  # a bar is drawn and not finished: end its line before an error message

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self._last = 0.0
        self._what = None

    def __call__(self, done: int, total: int, what: str) -> None:
        now = time.monotonic()
        finished = total and done >= total
        if not finished and what == self._what and now - self._last < 0.1:
            return
        self._last, self._what = now, what
        filled = int(self.width * done / total) if total else 0
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{what:<24.24} [{bar}] {done}/{total}")
        if finished:
            self.stream.write("\n")
        TextProgress.line_open = not finished
        self.stream.flush()


def say_error(message: str) -> None:
    """One line on stderr, on a line of its own even when a progress bar is open."""
    if TextProgress.line_open:
        sys.stderr.write("\n")
        TextProgress.line_open = False
    print(message, file=sys.stderr)


def say(message: str) -> None:
    print(message, file=sys.stderr)


def print_epoch(epoch: int, train_loss: float, val_f1: float) -> None:
    from ..core.workflows.finetuning import epoch_line

    print("\n" + epoch_line(epoch, train_loss, val_f1), file=sys.stderr)
