"""Run one engine call at a time off the main thread, with progress, Cancel and plain-words errors.

A panel hands ``JobRunner.run`` a function ``work(progress, cancel)`` and what to do with its
result; the runner runs it in a napari worker thread, shows progress in the dock's ``JobBar``,
and delivers the result or the error on the main thread. Errors the user can act on
(``DinolocError``) become notifications, never traceback dialogs.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

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
JOIN_SECONDS = 60.0  # closing waits this long for a cancelled job's current batch (or torch's import)
STATUS_CHARS = 300  # the status line shows this much of a failure; its tooltip shows all of it


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
    else:
        if not isinstance(error, (DinolocError, MemoryError)):
            log.error("%s failed", title, exc_info=(type(error), error, error.__traceback__))
        notify_error(f"{title} failed: {failure_reason(error)}")


def failure_reason(error: BaseException) -> str:
    """What went wrong, in the words the status line and the notification both use."""
    if isinstance(error, DinolocError):
        return str(error)
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():  # torch's OOM is a RuntimeError
        return "out of memory. Lower the batch size or the input size, or use the CPU."
    return (f"unexpected error ({type(error).__name__}: {error}). "
            "Nothing was changed; please report this with the log.")


class JobBar(QWidget):
    """Progress bar, what is being done, and a Cancel button: the dock's single job display."""

    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.status = QLabel("Ready")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # Long texts ("Fine-tuning: epoch 12 / 40, ...") wrap on a row of their own instead of being cut,
        # and must not widen the dock for good: the width is the dock's, the height follows the text.
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.bar = QProgressBar()
        self.bar.setMaximumHeight(16)
        self.bar.setTextVisible(True)
        self.bar.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job after the current batch; nothing is changed.")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        layout.addWidget(self.status)
        layout.addLayout(row)

    def set_text(self, text: str) -> None:
        """The status line; the tooltip keeps the whole text when it is shortened."""
        self.status.setText(text if len(text) <= STATUS_CHARS else text[:STATUS_CHARS - 1] + "…")
        self.status.setToolTip(text)

    def start(self, title: str) -> None:
        self.set_text(f"{title}…")
        self.bar.setRange(0, 0)  # busy until the first progress report
        self.bar.show()
        self.cancel_button.setEnabled(True)

    def show_progress(self, done: int, total: int, what: str) -> None:
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
            self.bar.setFormat("%v / %m")
        if what:
            self.set_text(what)

    def stop(self, message: str) -> None:
        self.bar.hide()
        self.cancel_button.setEnabled(False)
        self.set_text(message)


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
    error: Optional[BaseException] = None  # why it failed, for the status line


_WORKER_CLASS = None


def _joinable_worker_class():
    """napari's FunctionWorker that can be waited for, and that never lets a deleted dock end the
    process: emitting on signals whose dock is gone raises RuntimeError in the worker thread, which,
    left to escape ``run()`` into Qt, aborts the whole program (seen when closing at once)."""
    global _WORKER_CLASS
    if _WORKER_CLASS is None:
        from napari.qt.threading import FunctionWorker

        class JoinableWorker(FunctionWorker):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.ended = threading.Event()

            def run(self) -> None:
                try:
                    super().run()
                except RuntimeError:  # its signals were deleted with the dock: nobody is listening
                    pass
                finally:
                    self.ended.set()

        _WORKER_CLASS = JoinableWorker
    return _WORKER_CLASS


def join_workers(workers, seconds: float = JOIN_SECONDS) -> bool:
    """Wait until ``workers`` have ended (all within ``seconds``); False when one still runs."""
    from qtpy.QtCore import QThreadPool

    deadline = time.monotonic() + seconds
    for worker in list(workers):
        if not worker.ended.wait(max(0.0, deadline - time.monotonic())):
            log.warning("A background job did not stop within %.0f s of closing.", seconds)
            return False
    # the pool thread returns to Qt after ``ended``; let it go idle so nothing is left running
    QThreadPool.globalInstance().waitForDone(max(0, int((deadline - time.monotonic()) * 1000)) if workers else 0)
    return True


class JobRunner:
    """One job at a time for one dock: a second Run while one runs is refused with a notice."""

    def __init__(self, viewer, bar: JobBar):
        self._viewer = weakref.ref(viewer)
        self._bar = bar
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(bar.show_progress)
        bar.cancel_requested.connect(self.cancel)
        self._job: Optional[_Job] = None
        self._workers: set = set()  # every started worker not yet ended: closing joins them
        self.closed = False  # the viewer is closing: results are dropped, widgets are not touched

    @property
    def busy(self) -> bool:
        return self._job is not None

    def run(self, title: str, work: Work, on_done: Callable[[Any], None],
            on_error: Optional[Callable[[BaseException], None]] = None) -> bool:
        """Start ``work(progress, cancel)``; ``on_done(result)`` runs on the main thread."""
        if self.closed or not self.ensure_idle():
            return False
        job = self._job = _Job(title, CancelToken())
        progress = self._relay.progressed.emit
        job.worker = self._worker(work, (progress, job.token), {
            "returned": lambda result: self._deliver(job, on_done, result),
            "errored": lambda error: self._fail(job, on_error, error),
            "finished": lambda: self._finish(job),
        })
        job.task_id = self._register_task(job)
        self._bar.start(title)
        job.worker.start()
        return True

    def run_in_background(self, function: Callable, *args, on_done: Callable[[Any], None]) -> bool:
        """``function(*args)`` off the main thread, beside the job and without the bar (looking up the
        device); ``on_done(result)`` on the main thread unless the dock closed. Closing waits for it."""
        if self.closed:
            return False

        def deliver(result) -> None:
            if not self.closed:
                on_done(result)

        self._worker(function, args, {"returned": deliver}).start()
        return True

    def _worker(self, function: Callable, args: tuple, connect: dict):
        from napari.qt.threading import create_worker

        worker = create_worker(function, *args, _start_thread=False, _connect=connect,
                               _worker_class=_joinable_worker_class())
        self._workers = {w for w in self._workers if not w.ended.is_set()} | {worker}
        return worker

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

    def close(self, *_destroyed, wait_seconds: float = JOIN_SECONDS) -> bool:
        """The dock or the viewer is closing: stop the job at its next check, drop its result, and wait
        for every worker of this dock to end, so no thread outlives the window (nor aborts the exit)."""
        self.closed = True
        if self._job is not None:
            self._job.token.cancel()
        for worker in self._workers:
            worker.quit()
        return join_workers(self._workers, wait_seconds)

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
            job.error = error
            report_error(job.title, error)

    def _fail(self, job: _Job, on_error, error: BaseException) -> None:
        job.error = error
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
        if job.token.cancelled or isinstance(job.error, Cancelled):
            ended = "cancelled"
        elif job.error is not None:
            ended = f"failed: {failure_reason(job.error)}"
        else:
            ended = f"done in {seconds:.1f} s"
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

        status = Status.CANCELLED if job.token.cancelled else Status.FAILED if job.error else Status.COMPLETED
        update(job.task_id, status)


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
