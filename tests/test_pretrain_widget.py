"""Step 7 of the main dock, "Adapt the model to these cells": a tiny DINO run in a real viewer (Xvfb).

The engine runs a tiny 2-stain ViT (``scratch`` is swapped for it) for a few steps on the 24 cells of a
256 x 256 synthetic field; a checkpoint after every step, so the kNN probe runs as it would after each.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401

from napari_dinoloc.core.backbones import load_backbone
from napari_dinoloc.core.pretrain import read_training_checkpoint
from napari_dinoloc.core.workflows import pretraining

from test_finetune_widget import open_dock, true_classes
from test_pretrain_cli import TINY_SETTINGS, TINY_SPEC
from test_widgets import TIMEOUT_MS, private_folders, wait_idle  # noqa: F401  (private_folders: autouse)

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def tiny_engine(monkeypatch):
    monkeypatch.setattr(pretraining, "SCRATCH_SPEC", TINY_SPEC)
    monkeypatch.setattr(pretraining, "CROP_SIZE", 32)
    monkeypatch.setattr(pretraining, "base_settings",
                        lambda **changes: replace(TINY_SETTINGS, epochs=float(changes.pop("epochs", 2)),
                                                  checkpoint_minutes=1e-6))


def start_run(qtbot, make_napari_viewer, tmp_path, annotate=True):
    viewer, dock = open_dock(make_napari_viewer)
    if annotate:
        for name, labels in true_classes(viewer, n_classes=2, per_class=3).items():
            for label in labels:
                dock.state.annotate(int(label), name)
    panel = dock.pretrain_panel
    panel.choose(minutes=5, start=pretraining.SCRATCH, out=str(tmp_path / "models" / "adapted.pth"))
    return viewer, dock, panel


def test_a_run_plots_loss_and_knn_and_becomes_the_backbone(qtbot, make_napari_viewer, tmp_path):
    viewer, dock, panel = start_run(qtbot, make_napari_viewer, tmp_path)
    assert panel.start() is True
    wait_idle(qtbot, dock)
    qtbot.waitUntil(lambda: panel.last_run is not None, timeout=TIMEOUT_MS)
    run = panel.last_run
    out = tmp_path / "models" / "adapted.pth"
    assert run.stopped == "done" and run.checkpoint == out and out.is_file()
    assert run.teacher == out.with_suffix(".safetensors") and run.teacher.is_file()
    state = read_training_checkpoint(out)
    assert int(state["step"]) == run.steps == run.total_steps == 6  # 24 cells, batch 8, 2 epochs
    qtbot.waitUntil(lambda: panel.plot.steps()[-1:] == [6], timeout=TIMEOUT_MS)
    assert panel.plot.steps()[0] == 1 and len(panel.plot.steps()) == 6
    f1 = panel.plot.f1_points()
    assert len(f1) >= 1 and all(0.0 <= value <= 1.0 for _, value in f1)
    assert "kNN macro-F1 on the annotated cells" in panel.summary.text()
    # the result is step 2's backbone at once, and it loads
    assert dock.model_panel.spec().name == "checkpoint"
    assert Path(dock.model_panel.weights_path()) == run.teacher
    assert load_backbone("checkpoint", weights=run.teacher, device="cpu").embed_dim == 32


def test_cancel_keeps_the_last_checkpoint_as_the_backbone(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setattr(pretraining, "base_settings",
                        lambda **changes: replace(TINY_SETTINGS, epochs=40.0, checkpoint_minutes=1e-6))
    viewer, dock, panel = start_run(qtbot, make_napari_viewer, tmp_path, annotate=False)
    panel.relay.loss.connect(lambda step, loss: dock.runner.cancel() if step >= 2 else None)
    assert panel.start() is True
    wait_idle(qtbot, dock)
    qtbot.waitUntil(lambda: panel.last_run is not None, timeout=TIMEOUT_MS)
    run = panel.last_run
    assert run.stopped == "cancelled" and 2 <= run.steps < run.total_steps == 120
    assert int(read_training_checkpoint(run.checkpoint)["step"]) == run.steps
    assert run.teacher.is_file() and dock.model_panel.spec().name == "checkpoint"
    assert Path(dock.model_panel.weights_path()) == run.teacher
    assert panel.plot.f1_points() == []  # no annotations: no probe
    assert panel.summary.text().startswith(f"Saved {run.checkpoint}") and "Cancelled after step" in panel.summary.text()
