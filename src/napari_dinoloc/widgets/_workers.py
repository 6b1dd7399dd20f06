"""Run one engine call at a time off the main thread, with progress, Cancel and plain-words errors.

A panel hands ``JobRunner.run`` a function ``work(progress, cancel)`` and what to do with its
result; the runner runs it in a napari worker thread, shows progress in the dock's ``JobBar``,
and delivers the result or the error on the main thread. Errors the user can act on
(``DinolocError``) become notifications, never traceback dialogs.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget

from ..core.errors import Cancelled, DinolocError
from ..core.progress import CancelToken

log = logging.getLogger(__name__)


def _keep_triton_out() -> None:
    """Loading triton's LLVM after napari's OpenGL context exists crashes the process when the GL
    driver is Mesa (llvmpipe, radeonsi: its own LLVM). timm → torchvision → torch._dynamo probes
    for triton on import; marking it absent makes that probe answer False instead of loading it.
    The plugin never uses torch.compile, the only user of triton. (Mesa is a Linux driver.)"""
    import sys

    if sys.platform.startswith("linux") and "triton" not in sys.modules:
        sys.modules["triton"] = None


_keep_triton_out()

Work = Callable[[Callable[[int, int, str], None], CancelToken], Any]


def path_row(field, on_browse: Callable[[], None], tooltip: str = ""):
    """A file-path field with a "…" button that opens a file dialog (weights, model bundles)."""
    browse = QPushButton("…")
    browse.setFixedWidth(28)
    browse.setToolTip(tooltip)
    browse.clicked.connect(lambda _=False: on_browse())
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(field, 1)
    layout.addWidget(browse)
    return row


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def report_error(title: str, error: BaseException) -> None:
    """Tell the user what went wrong; unexpected errors also go to the log with their traceback."""
    if isinstance(error, Cancelled):
        notify_info(f"{title}: cancelled, nothing was changed.")
    elif isinstance(error, DinolocError):
        notify_error(str(error))
    elif isinstance(error, MemoryError) or "out of memory" in str(error).lower():  # torch's OOM is a RuntimeError
        notify_error(f"{title}: out of memory. Lower the batch size or the input size, or use the CPU.")
    else:
        log.error("%s failed", title, exc_info=(type(error), error, error.__traceback__))
        notify_error(f"{title} failed unexpectedly ({type(error).__name__}: {error}). "
                     "Nothing was changed; please report this with the log.")


class JobBar(QWidget):
    """Progress bar, what is being done, and a Cancel button: the dock's single job display."""

    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.status = QLabel("Ready")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # long progress texts must not widen the dock for good: let the label be cut instead
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bar = QProgressBar()
        self.bar.setMaximumHeight(16)
        self.bar.setTextVisible(True)
        self.bar.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job after the current batch; nothing is changed.")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.status, 1)
        layout.addWidget(self.bar, 2)
        layout.addWidget(self.cancel_button)

    def start(self, title: str) -> None:
        self.status.setText(f"{title}…")
        self.bar.setRange(0, 0)  # busy until the first progress report
        self.bar.show()
        self.cancel_button.setEnabled(True)

    def show_progress(self, done: int, total: int, what: str) -> None:
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
            self.bar.setFormat("%v / %m")
        if what:
            self.status.setText(what)

    def stop(self, message: str) -> None:
        self.bar.hide()
        self.cancel_button.setEnabled(False)
        self.status.setText(message)


class _ProgressRelay(QObject):
    # Emitted from the worker thread; Qt queues it to the main thread, where the bar lives.
    progressed = Signal(int, int, str)


@dataclass
class _Job:
    title: str
    token: CancelToken
    started: float = field(default_factory=time.perf_counter)
    worker: Any = None
    task_id: Any = None


class JobRunner:
    """One job at a time for one dock: a second Run while one runs is refused with a notice."""

    def __init__(self, viewer, bar: JobBar):
        self._viewer = weakref.ref(viewer)
        self._bar = bar
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(bar.show_progress)
        bar.cancel_requested.connect(self.cancel)
        self._job: Optional[_Job] = None
        self.closed = False  # the viewer is closing: results are dropped, widgets are not touched

    @property
    def busy(self) -> bool:
        return self._job is not None

    def run(self, title: str, work: Work, on_done: Callable[[Any], None],
            on_error: Optional[Callable[[BaseException], None]] = None) -> bool:
        """Start ``work(progress, cancel)``; ``on_done(result)`` runs on the main thread."""
        if self.closed or not self.ensure_idle():
            return False
        from napari.qt.threading import create_worker

        job = self._job = _Job(title, CancelToken())
        progress = self._relay.progressed.emit
        job.worker = create_worker(
            work, progress, job.token,
            _start_thread=False,
            _connect={
                "returned": lambda result: self._deliver(job, on_done, result),
                "errored": lambda error: self._fail(job, on_error, error),
                "finished": lambda: self._finish(job),
            },
        )
        job.task_id = self._register_task(job)
        self._bar.start(title)
        job.worker.start()
        return True

    def ensure_idle(self) -> bool:
        """True when no job runs; otherwise tell the user and return False."""
        if self._job is None:
            return True
        notify_warning(f"“{self._job.title}” is still running: wait for it to finish or press Cancel, then try again.")
        return False

    def cancel(self) -> None:
        if self._job is not None:
            self._job.token.cancel()
            self._bar.status.setText(f"Cancelling {self._job.title.lower()}…")

    def close(self) -> None:
        """The viewer is closing: stop the job at its next check and drop its result."""
        self.closed = True
        if self._job is not None:
            self._job.token.cancel()

    # ---- main-thread callbacks ----------------------------------------------------------------
    def _deliver(self, job: _Job, on_done, result) -> None:
        if self.closed:
            return
        if job.token.cancelled:  # the work ended before it saw the cancel: drop its result anyway
            notify_info(f"{job.title}: cancelled, nothing was changed.")
            return
        try:
            on_done(result)
        except Exception as error:  # applying a result must never leave the dock stuck
            report_error(job.title, error)

    def _fail(self, job: _Job, on_error, error: BaseException) -> None:
        if self.closed:
            return
        report_error(job.title, error)
        if on_error is not None:
            on_error(error)

    def _finish(self, job: _Job) -> None:
        self._update_task(job)
        if self._job is job:
            self._job = None
        if self.closed:
            return
        seconds = time.perf_counter() - job.started
        ended = "cancelled" if job.token.cancelled else f"done in {seconds:.1f} s"
        try:
            self._bar.stop(f"{job.title}: {ended}")
        except RuntimeError:  # the dock was closed while the job ran
            pass

    # ---- napari's task list: closing the window cancels our job ----------------------------------
    def _register_task(self, job: _Job):
        window = getattr(self._viewer(), "window", None)
        register = getattr(window, "_register_task_status", None)
        if register is None:
            return None
        from napari.utils.task_status import Status

        return register("napari-dinoloc", Status.BUSY, job.title, cancel_callback=self.close)

    def _update_task(self, job: _Job) -> None:
        window = getattr(self._viewer(), "window", None)
        update = getattr(window, "_update_task_status", None)
        if update is None or job.task_id is None:
            return
        from napari.utils.task_status import Status

        update(job.task_id, Status.CANCELLED if job.token.cancelled else Status.COMPLETED)


def reports_errors(title: str):
    """Decorate a button handler: a DinolocError becomes a notification, the dock stays usable."""
    import functools

    def wrap(method):
        @functools.wraps(method)
        def guarded(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - every error is reported, none escapes to Qt
                report_error(title, error)
                return None

        return guarded

    return wrap
