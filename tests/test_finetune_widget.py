"""Step 5 (fine-tune) and step 6 (evaluation report) of the main dock, in a real napari viewer (Xvfb).

Lean for 2 cores: a 256 x 256 synthetic field with 24 cells, the random-tiny backbone (crops of
64 px resized to 32), the last block only, a few epochs.
"""

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401

from napari.utils.notifications import NotificationSeverity

from napari_dinoloc._sample_data import synthetic_layers
from napari_dinoloc.widgets._layers import CELLS, find_layer
from napari_dinoloc.widgets.dock import DinolocWidget
from napari_dinoloc.widgets.finetune_panel import FinetuneRun

from test_widgets import (  # noqa: F401  (private_folders: autouse, keeps files in tmp_path)
    TIMEOUT_MS, check_prediction_layers, click_canvas, messages, point_of, press_key, private_folders, use_truth,
    wait_idle,
)

pytestmark = pytest.mark.gui
FOUR_STAINS = ("microtubules", "protein", "nucleus", "er")


# ---- helpers ------------------------------------------------------------------------------------------
def open_dock(make_napari_viewer, seed=1):
    viewer = make_napari_viewer()
    for data, kwargs, kind in synthetic_layers(seed, shape=(256, 256), n_cells=24):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock, name="DINO localization")
    use_truth(dock)
    return viewer, dock


def embed(qtbot, dock):
    dock.model_panel.choose("random-tiny", input_size=32, crop_size=64)
    dock.model_panel.embed_button.click()
    wait_idle(qtbot, dock)
    assert dock.state.session.embeddings is not None


def true_classes(viewer, n_classes=3, per_class=3):
    """{class: [cell labels]} from the sample's ground truth, classes that have a number key."""
    truth = find_layer(viewer, "ground truth cells").features
    groups = truth.groupby("true_class")["label"].apply(list)
    chosen = [(name, labels[:per_class]) for name, labels in groups.items() if len(labels) >= per_class]
    return dict(chosen[:n_classes])


def annotate_true_classes(viewer, state, n_classes=3, per_class=3):
    """Annotate cells of each true class through the state (no clicks: the tests of fine-tuning and the report)."""
    for name, labels in true_classes(viewer, n_classes, per_class).items():
        for label in labels:
            state.annotate(int(label), name)


def annotate_by_clicking(viewer, dock, groups):
    """As a user does: a number key picks the class, a click on the cell gives it that class."""
    state, cells = dock.state, find_layer(viewer, CELLS)
    dock.annotate_panel.annotate_button.click()
    for name, labels in groups.items():
        press_key(viewer, state.annotations.key_of(name))
        for label in labels:
            click_canvas(viewer, cells.data_to_world(point_of(state, int(label))))
    dock.annotate_panel.annotate_button.click()
    assert state.annotations.annotations == {int(label): name for name, labels in groups.items() for label in labels}


def train_head(qtbot, dock):
    dock.predict_panel.choose("logistic")
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert dock.state.session.predictions is not None


def session_objects(session):
    return session.backbone, session.embeddings, session.head, session.predictions


# ---- the flow ---------------------------------------------------------------------------------------------
def test_finetune_cancel_run_apply_save_load_and_report(make_napari_viewer, qtbot, tmp_path):
    viewer, dock = open_dock(make_napari_viewer)
    state, panel = dock.state, dock.finetune_panel
    embed(qtbot, dock)
    groups = true_classes(viewer)
    annotate_by_clicking(viewer, dock, groups)
    train_head(qtbot, dock)
    before = session_objects(state.session)
    predicted_before = state.session.predictions.predicted.copy()

    # A long run, cancelled once the live plot has its first point: nothing in the session changes.
    panel.choose("last-blocks", blocks=1, epochs=40, lr=1e-4)
    panel.start_button.click()
    qtbot.waitUntil(lambda: len(panel.plot.epochs()) >= 1, timeout=TIMEOUT_MS)
    dock.job_bar.cancel_button.click()
    wait_idle(qtbot, dock)
    assert all(now is then for now, then in zip(session_objects(state.session), before))
    assert np.array_equal(state.session.predictions.predicted, predicted_before)
    assert panel.last_run is None and not panel.use_button.isEnabled()
    assert any("cancelled" in m for m in messages(NotificationSeverity.INFO))

    # Run to the end: the plot got one point per epoch, live, from the worker.
    panel.choose("last-blocks", blocks=1, epochs=3, lr=1e-4)
    panel.start_button.click()
    wait_idle(qtbot, dock)
    result = panel.last_run.result
    assert panel.plot.epochs() == [record["epoch"] for record in result.history] == [1, 2, 3]
    assert session_objects(state.session)[0] is before[0]  # still not applied

    # Use it for all cells: new weights, re-embedded cells, the fine-tuned head, one class per cell.
    panel.use_button.click()
    wait_idle(qtbot, dock)
    session = state.session
    assert session.backbone.weights_hash == result.weights_hash != before[0].weights_hash
    assert session.embeddings is not before[1] and session.embeddings.signature["weights_hash"] == result.weights_hash
    assert session.head is result.head and session.predictions.class_names == result.class_names
    check_prediction_layers(viewer, state)
    applied, tuned_backbone = session.predictions.predicted.copy(), session.backbone

    # Save the bundle; step 4 loads it (backbone_for_bundle applies the weights) and predicts the same.
    panel.save_model(str(tmp_path / "tuned"))
    wait_idle(qtbot, dock)
    assert (tmp_path / "tuned.dinoloc").is_file()
    dock.predict_panel.choose("bundle", str(tmp_path / "tuned.dinoloc"))
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert state.session.backbone is not tuned_backbone
    assert state.session.backbone.weights_hash == result.weights_hash
    assert np.array_equal(state.session.predictions.predicted, applied)

    # Fine-tuning again starts from the base weights, also from a fine-tuned model loaded from a file.
    assert panel.starting_point()[0]().weights_hash == before[0].weights_hash

    # The report: frozen against fine-tuned in each fold, a low-shot curve, pictures, saved to a folder.
    predictions = state.session.predictions
    report = dock.report_panel
    report.folds.setValue(2)
    report.compare.setChecked(True)
    panel.choose("last-blocks", blocks=1, epochs=2, lr=1e-4)
    report.evaluate_button.click()
    wait_idle(qtbot, dock)
    assert set(report.report.evaluations) == {"frozen", "finetuned"}
    text = report.plain_text()
    assert "gain from fine-tuning" in text and "Low-shot curve" in text and "Confusion matrix" in text
    figures = report.figures()  # 2 confusion matrices and the curve, drawn
    assert [f.caption.split(",")[0] for f in figures] == ["Confusion matrix", "Confusion matrix", "Low-shot curve"]
    assert all(f.figure.figure.axes for f in figures)
    written = report.save_report(str(tmp_path / "report"))
    assert {p.name for p in written} == {"report.json", "confusion_frozen.png", "confusion_finetuned.png", "low_shot.png"}
    assert state.session.predictions is predictions  # evaluating changes nothing
    assert not messages(NotificationSeverity.ERROR)


def test_divergence_stops_with_a_warning_and_cancel_keeps_the_last_run(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer)
    state, panel = dock.state, dock.finetune_panel
    embed(qtbot, dock)
    annotate_true_classes(viewer, state)

    # A learning rate far too large: the run stops early, warns, and is not offered for use.
    panel.choose("last-blocks", blocks=1, epochs=30, lr=1.0)
    panel.start_button.click()
    wait_idle(qtbot, dock)
    result = panel.last_run.result
    assert result.diverged and len(result.history) < 30
    assert any("diverged" in m and "Lower the learning rate" in m for m in messages(NotificationSeverity.WARNING))
    assert not panel.use_button.isEnabled() and not panel.save_button.isEnabled()
    assert "diverged" in panel.use_button.toolTip() and "diverged" in panel.summary.text()
    assert panel.plot.epochs() == [record["epoch"] for record in result.history]
    panel.use_for_all_cells()  # called anyway: refused with the reason, nothing changes
    assert "diverged" in last_error() and state.session.head is None

    # A good run, then a second one cancelled: the good run's curve and summary stay, together.
    panel.choose("last-blocks", blocks=1, epochs=2, lr=1e-4)
    panel.start_button.click()
    wait_idle(qtbot, dock)
    good, summary = panel.last_run, panel.summary.text()
    assert not good.result.diverged and panel.use_button.isEnabled() and panel.plot.epochs() == [1, 2]
    panel.choose("last-blocks", blocks=1, epochs=40, lr=1e-4)
    panel.start_button.click()
    assert panel.plot.epochs() == []  # the new run's plot starts empty...
    dock.job_bar.cancel_button.click()
    wait_idle(qtbot, dock)
    assert panel.last_run is good and panel.summary.text() == summary  # ...and Cancel brings the last run's back
    assert panel.plot.epochs() == [1, 2] and "best epoch" in panel.plot.loss_axes.get_title()
    assert any("cancelled" in m for m in messages(NotificationSeverity.INFO))


def test_head_only_hides_epochs_and_rate_and_plots_its_held_out_curve(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer)
    state, panel = dock.state, dock.finetune_panel
    embed(qtbot, dock)
    annotate_true_classes(viewer, state)
    panel.choose("head")
    assert all(control.isHidden() for control in (panel.epochs, panel.lr, panel.blocks))
    panel.start_button.click()
    wait_idle(qtbot, dock)
    curve = panel.last_run.result.head_curve
    assert len(curve) >= 2 and panel.plot.loss_axes.get_xlabel() == "training cells"
    assert list(panel.plot.f1_line.get_xdata()) == [row["train_cells"] for row in curve]
    assert list(panel.plot.f1_line.get_ydata()) == [row["val_f1"] for row in curve]
    panel.choose("last-blocks")
    assert not any(control.isHidden() for control in (panel.epochs, panel.lr, panel.blocks))


def test_report_header_tables_and_figures_agree_and_follow_the_theme(make_napari_viewer, qtbot):
    from matplotlib.colors import to_hex
    from napari.utils.theme import get_theme

    viewer, dock = open_dock(make_napari_viewer)
    state, report = dock.state, dock.report_panel
    embed(qtbot, dock)
    annotate_true_classes(viewer, state)
    viewer.theme = "dark"
    report.folds.setValue(5)  # 3 cells per class: the folds are reduced to 3, and the report says so everywhere
    report.evaluate_button.click()
    wait_idle(qtbot, dock)
    evaluation = report.report.evaluations["frozen"]
    assert evaluation.folds == 3 and {row["folds"] for row in report.report.curve} == {3}
    header = report.header.text()
    assert "3-fold cross-validation" in header and "reduced from 5 to 3" in header and "5-fold" not in header
    assert "3-fold" in report.plain_text().splitlines()[0]

    # Per-class table: every class, its F1 and cells; the low-shot table: the cells of each point, all different.
    tables = [w for w in (report.results.itemAt(i).widget() for i in range(report.results.count()))
              if type(w).__name__ == "FullTable"]
    f1_table, curve_table = tables[0], tables[-1]
    assert [f1_table.cell_text(i, 0) for i in range(f1_table.rowCount())] == list(evaluation.class_names)
    cells = [curve_table.cell_text(i, 0) for i in range(curve_table.rowCount())]
    assert cells == [f"{row['train_cells']:g}" for row in report.report.curve] and len(set(cells)) == len(cells)

    # Figures in the theme's colours, drawn again when the theme changes; Open bigger follows too.
    confusion = report.figures()[0]
    bigger = confusion.open_bigger()
    dark, light = (get_theme(name).background.as_hex() for name in ("dark", "light"))
    assert to_hex(confusion.figure.figure.get_facecolor()) == dark != light
    viewer.theme = "light"
    for canvas in (confusion.figure, bigger.canvas, report.figures()[-1].figure):
        assert to_hex(canvas.figure.get_facecolor()) == light
    bigger.close()
    assert not messages(NotificationSeverity.ERROR)


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned_run():
    """A short fine-tuning run made by the engine alone, for the tests that need a result."""
    from napari_dinoloc.core.backbones import load_backbone
    from napari_dinoloc.core.embedding import EmbedSettings
    from napari_dinoloc.core.finetune import FinetuneSettings, finetune
    from napari_dinoloc.core.images import make_cell_image
    from napari_dinoloc.core.synthetic import make_field

    field = make_field(seed=1, shape=(256, 256), n_cells=24)
    image = make_cell_image(field.image, field.stains, "field")
    by_class = {}
    for label, name in sorted(field.cell_class.items()):
        by_class.setdefault(name, []).append(label)
    annotations = {label: name for name, labels in list(by_class.items())[:2] for label in labels[:2]}
    base = load_backbone("random-tiny", device="cpu")
    result = finetune([(image, field.labels, annotations)], base, EmbedSettings(crop_size=64, input_size=32),
                      FinetuneSettings(blocks=1, epochs=1))
    return FinetuneRun(result, base)


def last_error():
    errors = messages(NotificationSeverity.ERROR)
    return errors[-1] if errors else ""


def test_too_few_classes_or_cells_are_refused_before_any_work(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer)
    state, panel, report = dock.state, dock.finetune_panel, dock.report_panel
    panel.start_button.click()
    assert "No embeddings yet" in last_error()
    embed(qtbot, dock)
    before = session_objects(state.session)
    (first, first_cells), (second, second_cells) = list(true_classes(viewer, 2, 2).items())
    for label in first_cells:
        state.annotate(int(label), first)

    for button in (panel.start_button, report.evaluate_button):
        button.click()
        assert f"Only one class ({first})" in last_error() and not dock.runner.busy

    state.annotate(int(second_cells[0]), second)
    for button in (panel.start_button, report.evaluate_button):
        button.click()
        assert f"'{second}' (1)" in last_error() and "fewer than 2" in last_error() and not dock.runner.busy

    assert all(now is then for now, then in zip(session_objects(state.session), before))
    assert panel.last_run is None and panel.plot.epochs() == [] and report.report is None


def test_bundles_that_do_not_fit_or_are_damaged(make_napari_viewer, qtbot, tmp_path, tuned_run):
    from napari_dinoloc.core.bundle import save_bundle
    from napari_dinoloc.core.bundle import finetune_bundle

    viewer, dock = open_dock(make_napari_viewer)
    state, panel = dock.state, dock.finetune_panel
    four_stains = FinetuneRun(replace(tuned_run.result, stains=FOUR_STAINS), tuned_run.base)
    path = save_bundle(finetune_bundle(four_stains.result, four_stains.base), tmp_path / "four")

    dock.predict_panel.choose("bundle", str(path))  # a saved model for 4 stains, a 2-stain image
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert "lacks microtubules, er" in last_error() and state.session.predictions is None

    panel.last_run = four_stains  # the same through step 5's Use for all cells
    panel.use_for_all_cells()
    assert "lacks microtubules, er" in last_error() and not dock.runner.busy and state.session.embeddings is None

    good = save_bundle(finetune_bundle(tuned_run.result, tuned_run.base), tmp_path / "good")
    damaged = tmp_path / "damaged.dinoloc"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # cut off mid-way, as a failed copy
    dock.predict_panel.choose("bundle", str(damaged))
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert "Cannot read damaged.dinoloc" in last_error() and "Traceback" not in last_error()
    assert state.session.predictions is None and state.session.backbone is None


def test_cancel_while_saving_leaves_the_previous_file(make_napari_viewer, qtbot, tmp_path, tuned_run, monkeypatch):
    import time

    from napari_dinoloc.core import bundle

    viewer, dock = open_dock(make_napari_viewer)
    panel = dock.finetune_panel
    panel.last_run = tuned_run
    target = tmp_path / "model.dinoloc"
    target.write_bytes(b"the previous model")
    started, real_write = threading.Event(), bundle.write_safetensors

    def slow_write(handle, tensors, metadata, progress=None, cancel=None):
        def after_each_tensor(done, total, what):  # hold the save mid-file until Cancel is pressed
            started.set()
            deadline = time.monotonic() + 30
            while not cancel.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)
        real_write(handle, tensors, metadata, after_each_tensor, cancel)

    monkeypatch.setattr(bundle, "write_safetensors", slow_write)
    panel.save_model(str(target))
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT_MS)
    dock.job_bar.cancel_button.click()
    wait_idle(qtbot, dock)
    assert target.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["model.dinoloc"]  # no half-written file
    assert any("cancelled" in m for m in messages(NotificationSeverity.INFO)) and not last_error()
