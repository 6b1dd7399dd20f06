"""Closing the window at once, again and again: no abort, no thread, no worker process left behind.

Each open/close runs in one child interpreter (the abort this guards against happened when the
interpreter exited while a worker thread still ran), which checks after every close that Qt's
thread pool is idle, that no Python thread is left beyond those present before the first viewer,
and that no child process (the UMAP worker) survives.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
CYCLES = 20

SCRIPT = r"""
import sys, threading
import psutil
from qtpy.QtCore import QThreadPool
from qtpy.QtWidgets import QApplication
from napari_dinoloc.launch import open_viewer_with_sample

before = {id(t) for t in threading.enumerate()}
for cycle in range(int(sys.argv[1])):
    viewer = open_viewer_with_sample(run=False)   # both docks and the sample; the workers start at once
    viewer.close()                                # ... and the window closes at once
    left = [t.name for t in threading.enumerate() if id(t) not in before and t.is_alive()]
    busy = QThreadPool.globalInstance().activeThreadCount()
    children = psutil.Process().children(recursive=True)
    assert not left and busy == 0 and not children, f"cycle {cycle}: threads {left}, pool {busy}, processes {children}"
    QApplication.processEvents()                  # late signals reach docks that are gone: no harm
    print("closed", cycle, flush=True)
"""


def test_opening_both_docks_and_closing_at_once_leaves_nothing_behind(tmp_path):
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, NAPARI_DINOLOC_HOME=str(tmp_path / "home"), DINOLOC_CACHE_DIR=str(tmp_path / "cache"),
               NAPARI_CONFIG=str(tmp_path / "napari.yaml"),
               PYTHONPATH=os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(CYCLES)], env=env, capture_output=True, text=True,
                          timeout=900)
    closed = [line for line in done.stdout.splitlines() if line.startswith("closed")]
    assert done.returncode == 0, f"exit {done.returncode} after {len(closed)} closes:\n{done.stderr[-3000:]}"
    assert len(closed) == CYCLES
    assert "has been deleted" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
