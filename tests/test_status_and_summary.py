"""The dock tells the truth: a failed job says so, predictions that no longer hold are marked, the job
bar's text is never cut, and predictions are summed up per image (also for a whole folder)."""

import numpy as np
import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401
from napari.utils.notifications import NotificationSeverity
from test_widgets import cells_of_true_class, embed, messages, open_dock, private_folders, use_truth, wait_idle  # noqa: F401

from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.table import read_table

pytestmark = pytest.mark.gui


def annotate_and_predict(qtbot, dock):
    state = dock.state
    for name, members in list(cells_of_true_class(dock.viewer, state).items())[:2]:
        for label, _ in members:
            state.annotate(label, name)
    dock.predict_panel.choose("logistic")
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert state.session.predictions is not None


def test_a_failed_job_says_failed_and_the_predictions_are_marked_stale(make_napari_viewer, qtbot, monkeypatch):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    embed(qtbot, dock)
    annotate_and_predict(qtbot, dock)
    panel, bar = dock.predict_panel, dock.job_bar
    assert "done in" in bar.status.text() and panel.legend.isEnabled() and not panel.stale_note.isVisibleTo(panel)
    before = dock.state.session.predictions

    def broken(*args, **kwargs):
        raise DinolocError("The classifier could not be fitted: annotate more cells.")

    monkeypatch.setattr(dock.state.session, "train_head", broken)
    panel.predict_button.click()
    wait_idle(qtbot, dock)
    status = bar.status.text()
    assert status.startswith("Training the classifier: failed: The classifier could not be fitted") and "done" not in status
    assert messages(NotificationSeverity.ERROR)[-1] == ("Training the classifier failed: "
                                                        "The classifier could not be fitted: annotate more cells.")
    assert dock.state.session.predictions is before
    assert not panel.legend.isEnabled() and panel.legend.stale
    assert panel.stale_note.isVisibleTo(panel) and "failed" in panel.stale_note.text()
    monkeypatch.undo()

    panel.predict_button.click()  # predicting again clears the mark
    wait_idle(qtbot, dock)
    assert panel.legend.isEnabled() and not panel.stale_note.isVisibleTo(panel)

    # one more annotation: the predictions are from the previous annotations until trained again
    store = dock.state.annotations
    spare = next(int(label) for label in dock.state.session.table.label if int(label) not in store.annotations)
    dock.state.annotate(spare, next(iter(store.annotations.values())))
    assert not panel.legend.isEnabled() and "previous annotations" in panel.stale_note.text()
    dock.state.annotate(spare, None)
    assert panel.legend.isEnabled()

    # another classifier chosen: the shown predictions are not the chosen classifier's
    panel.choose("knn")
    assert "previous classifier" in panel.stale_note.text() and not panel.legend.isEnabled()
    panel.choose("logistic")

    # a failed embedding is reported as failed too, never as done
    monkeypatch.setattr(dock.state.session, "get_backbone", lambda *a, **k: (_ for _ in ()).throw(DinolocError("No weights.")))
    dock.model_panel.embed_button.click()
    wait_idle(qtbot, dock)
    assert bar.status.text() == "Embedding cells: failed: No weights."


def test_the_job_bar_text_is_never_cut(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    bar = dock.job_bar
    text = ("Fine-tuning: epoch 12 / 40, training loss 0.4321, validation macro-F1 0.87 (best so far, 3 epochs ago); "
            "the last 2 blocks of the backbone and the head are trained, with layer-wise learning-rate decay 0.75")
    bar.start("Fine-tuning")
    bar.show_progress(12, 40, text)
    dock.show()
    qtbot.wait(50)
    label = bar.status
    assert label.text() == text and label.toolTip() == text
    metrics = label.fontMetrics()
    fits = metrics.horizontalAdvance(text) <= label.contentsRect().width()
    wrapped = label.wordWrap() and label.height() >= label.heightForWidth(label.width()) > metrics.height()
    assert fits or wrapped
    assert wrapped and not fits  # this text is longer than the dock is wide: it wraps
    assert label.width() <= bar.width()  # the label did not widen the bar to hold it either


def test_per_image_summary_and_predicting_a_folder(make_napari_viewer, qtbot, tmp_path):
    from napari_dinoloc.core.sample_files import write_samples

    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    embed(qtbot, dock)
    annotate_and_predict(qtbot, dock)
    box, state = dock.predict_panel.image_summary, dock.state
    names = list(state.session.predictions.class_names)
    [row] = box.table.rows  # this image, in the dock
    counts = np.bincount(state.session.predictions.predicted, minlength=len(names))
    assert row["cells"] == len(state.session.predictions.labels)
    assert [row[f"n_{n}"] for n in names] == counts.tolist()
    assert sum(row[f"fraction_{n}"] for n in names) == pytest.approx(1, abs=1e-5)
    assert box.table.rowCount() == 1 and box.table.columnCount() == 2 + len(names)

    written = box.export_summary_csv(str(tmp_path / "one.csv"))
    assert [r["image"] for r in read_table(written)] == [state.session.image.name]

    folder = tmp_path / "images"
    write_samples(folder, count=2, size=192, seed=3)
    out = tmp_path / "out" / "cells.csv"
    out.parent.mkdir()
    assert box.predict_folder(str(folder), str(out))
    wait_idle(qtbot, dock)
    assert "done in" in dock.job_bar.status.text(), dock.job_bar.status.text()
    cells, summary = read_table(out), read_table(tmp_path / "out" / "cells_per_image.csv")
    assert sorted({r["image"] for r in cells}) == sorted(r["image"] for r in summary) == ["field_000", "field_001"]
    for image in summary:
        assert int(image["cells"]) == sum(r["image"] == image["image"] for r in cells) > 0
        assert sum(float(image[f"fraction_{n}"]) for n in names) == pytest.approx(1, abs=1e-5)
    assert box.table.rowCount() == 2 and any("cells_per_image.csv" in m for m in messages(NotificationSeverity.INFO))
