"""What the command line writes to the terminal besides results: progress, notes, warnings, the error line."""

from __future__ import annotations

import sys
import time
import warnings


class TextProgress:
    """Progress on stderr. On a terminal: one bar redrawn at most 10 times a second. Elsewhere (a log
    file, a pipe): one line per step when it starts and when it ends, never redrawn with ``\\r``."""

    line_open = False  # a bar is drawn and not finished: end its line before another message

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self._last = 0.0
        self._what = None
        self._drawn = 0  # characters of the bar last drawn, cleared when a shorter one replaces it
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int, what: str) -> None:
        finished = bool(total) and done >= total
        if not self.terminal:
            self._log_line(done, total, what, finished)
            return
        now = time.monotonic()
        if not finished and what == self._what and now - self._last < 0.1:
            return
        self._last, self._what = now, what
        filled = int(self.width * done / total) if total else 0
        text = f"{what} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}"
        self.stream.write("\r" + text.ljust(self._drawn))
        self._drawn = 0 if finished else len(text)
        if finished:
            self.stream.write("\n")
        TextProgress.line_open = not finished
        self.stream.flush()

    def _log_line(self, done: int, total: int, what: str, finished: bool) -> None:
        started = what != self._what
        self._what = None if finished else what
        if finished:
            self.stream.write(f"{what}: {done}/{total} done\n")
        elif started:
            self.stream.write(f"{what}: {done}/{total}\n")
        self.stream.flush()


def say_error(message: str) -> None:
    """One line on stderr, on a line of its own even when a progress bar is open."""
    _end_bar()
    print(message, file=sys.stderr)


def say(message: str) -> None:
    _end_bar()
    print(message, file=sys.stderr)


def note(message: str) -> None:
    """Something the user should know about how the input was read (one line, stderr)."""
    say(f"dinoloc: note: {message}")


def _end_bar() -> None:
    if TextProgress.line_open:
        sys.stderr.write("\n")
        TextProgress.line_open = False


def warnings_as_lines() -> None:
    """Warnings become one ``dinoloc: warning:`` line each (e.g. a damaged cache entry that is recomputed)
    instead of Python's file-and-line dump; every one is shown, not only the first of its kind."""
    original = warnings.showwarning
    warnings.filterwarnings("always", message="A damaged embedding cache entry")

    def show(message, category, filename, lineno, file=None, line=None):
        if "napari_dinoloc" in str(filename) or str(message).startswith("A damaged"):
            say(f"dinoloc: warning: {' '.join(str(message).split())}")
        else:  # other libraries' warnings as Python shows them
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def report_skips(skips) -> int:
    """The images a batch went on without, with their reasons; exit status 3 when there are any."""
    if not skips:
        return 0
    say(f"dinoloc: skipped {len(skips)} image(s); the results hold the others:")
    for line in skips.lines():
        say(f"  {line}")
    return 3


def print_epoch(epoch: int, train_loss: float, val_f1: float) -> None:
    from ..core.workflows.finetuning import epoch_line

    print("\n" + epoch_line(epoch, train_loss, val_f1), file=sys.stderr)
