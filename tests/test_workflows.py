"""The use-case layer (core.workflows) on its own: the tasks the command line and the widgets share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_dinoloc.core.backbones import is_fine_tuned, load_backbone
from napari_dinoloc.core.batch import RunOptions, image_jobs
from napari_dinoloc.core.bundle import load_bundle
from napari_dinoloc.core.embedding import EmbedSettings
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.finetune import FinetuneSettings
from napari_dinoloc.core.images import load_cell_image, make_cell_image
from napari_dinoloc.core.pipeline import Session
from napari_dinoloc.core.synthetic import make_field
from napari_dinoloc.core.table import read_table
from napari_dinoloc.core.workflows import cells as cell_files
from napari_dinoloc.core.workflows import finetuning, predicting, reports, training
from napari_dinoloc.core.workflows.images import NOT_USED, image_from_channels

CLASSES = ("nucleoplasm", "cytoplasm", "plasma_membrane")
EMBED = EmbedSettings(crop_size=48, device="cpu")
QUICK = FinetuneSettings(epochs=1, batch_size=8, max_batch=8, patience=5)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def field():
    return make_field(seed=5, shape=(320, 320), classes=CLASSES)


@pytest.fixture(scope="module")
def files(field, tmp_path_factory):
    """field_000.tif (nucleus, protein), its label image and cells.csv, as `dinoloc sample` writes them."""
    folder = tmp_path_factory.mktemp("field")
    tifffile.imwrite(folder / "field_000.tif", field.image, metadata={"axes": "CYX"})
    tifffile.imwrite(folder / "field_000_labels.tif", field.labels.astype(np.int32))
    rows = [f"field_000,{label},{name}" for label, name in sorted(field.cell_class.items())]
    (folder / "cells.csv").write_text("\n".join(["image,label,class", *rows]) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random-tiny", device="cpu")


@pytest.fixture
def jobs(files):
    return image_jobs([files / "field_000.tif"], [files / "field_000_labels.tif"])


@pytest.fixture
def options():
    return RunOptions(stains="nucleus=0,protein=1", embed=EMBED)


def n_cells(field) -> int:
    return int(field.labels.max())


# ---- training ------------------------------------------------------------------------------------
def test_training_set_holds_the_annotated_cells_only(field, files, jobs, options, backbone):
    cells = training.training_set(training.embedded_sessions(jobs, options, backbone), files / "cells.csv")
    assert cells.vectors.shape[0] == len(field.cell_class) == len(cells.classes)
    assert sorted(cells.classes) == sorted(field.cell_class.values())
    assert cells.last_session.image.name == "field_000"


def test_training_set_says_when_no_cell_is_annotated(files, jobs, options, backbone, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("image,label,class\nsomewhere_else,1,cytoplasm\n", encoding="utf-8")
    with pytest.raises(DinolocError, match="No cell of these images is annotated"):
        training.training_set(training.embedded_sessions(jobs, options, backbone), other)


def test_train_model_writes_a_bundle_with_its_classes_and_scores(field, files, jobs, options, backbone, tmp_path):
    model = training.train_model(jobs, options, backbone, files / "cells.csv", "logistic", out=tmp_path / "m.dinoloc")
    bundle = load_bundle(model.path)
    assert set(bundle.class_names) == set(field.cell_class.values())
    assert sum(bundle.class_counts.values()) == model.cells == len(field.cell_class)
    assert 0.0 <= model.evaluation.macro_f1 <= 1.0 and model.evaluation.n_cells == model.cells
    assert training.model_summary(model, "logistic").startswith(f"{model.path}: logistic head on {model.cells} cells")


# ---- predicting ---------------------------------------------------------------------------------
def test_predict_with_a_saved_bundle_writes_one_row_per_cell(field, files, jobs, options, backbone, tmp_path):
    saved = training.train_model(jobs, options, backbone, files / "cells.csv", "logistic", out=tmp_path / "m.dinoloc")
    model = predicting.prediction_model(jobs, options, model_path=saved.path, device="cpu")
    assert model.bundle is not None and model.options.embed.crop_size == 48
    result = predicting.predict_with_model(jobs, model, tmp_path / "cells.csv")
    rows = read_table(result.path)
    assert result.cells == len(rows) == n_cells(field)
    assert {r["predicted_class"] for r in rows} <= set(CLASSES)


def test_predict_with_a_head_trained_now(field, files, jobs, options, backbone, tmp_path):
    model = predicting.prediction_model(jobs, options, annotations_path=files / "cells.csv", head_kind="knn",
                                        load_backbone=lambda: backbone)
    assert model.bundle is None and model.head.kind == "knn"
    result = predicting.predict_with_model(jobs, model, tmp_path / "cells.csv")
    assert result.cells == n_cells(field)


def test_prediction_model_needs_exactly_one_source(jobs, options, files):
    with pytest.raises(DinolocError, match="either --model or --annotations"):
        predicting.prediction_model(jobs, options, model_path="m.dinoloc", annotations_path=files / "cells.csv")
    with pytest.raises(DinolocError, match="Nothing to predict with"):
        predicting.prediction_model(jobs, options)


def embedded_session(field, backbone):
    session = Session()
    session.set_image(make_cell_image(field.image, field.stains, name="field_000"))
    session.set_labels(field.labels)
    session.set_backbone(backbone)
    session.set_embeddings(session.compute_embeddings(EMBED))
    return session


def test_a_bundle_of_the_session_predicts_without_embedding_again(field, backbone, tmp_path):
    session = embedded_session(field, backbone)
    session.set_head(session.train_head("logistic", field.cell_class))
    counts = {name: list(field.cell_class.values()).count(name) for name in CLASSES}
    path = predicting.save_session_model(session, counts, tmp_path / "s.dinoloc")
    assert load_bundle(path).class_counts == counts
    backbone_used, embeddings, bundle = predicting.predict_session_with_bundle(session, path, device="cpu")
    assert backbone_used is None and embeddings is None  # the current embeddings fit the bundle
    other = Session()
    other.set_image(session.image)
    other.set_labels(field.labels)
    backbone_used, embeddings, _ = predicting.predict_session_with_bundle(other, path, device="cpu")
    np.testing.assert_allclose(embeddings.vectors, session.embeddings.vectors, atol=1e-5)


def test_saving_a_session_model_needs_a_trained_head(field, backbone, tmp_path):
    with pytest.raises(DinolocError, match="no trained model yet"):
        predicting.save_session_model(embedded_session(field, backbone), {}, tmp_path / "s.dinoloc")


# ---- evaluating and the report -----------------------------------------------------------------
def test_evaluate_with_a_low_shot_curve_and_the_written_report(field, files, jobs, options, backbone, tmp_path):
    cells = training.training_set(training.embedded_sessions(jobs, options, backbone), files / "cells.csv")
    plan = reports.EvaluationPlan(cells.vectors, cells.classes, None, "logistic", 3, fractions=[0.5, 1.0])
    report = reports.evaluate(plan)
    evaluation = report.evaluations["frozen"]
    assert evaluation.folds == 3 and int(evaluation.confusion.sum()) == len(field.cell_class)
    assert [row["fraction"] for row in report.curve] == [0.5, 1.0]
    assert len(reports.curve_lines(report.curve)) == 2
    written = reports.write_report(tmp_path / "report", report)
    assert sorted(p.name for p in written) == ["confusion_frozen.png", "low_shot.png", "report.json"]
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["evaluations"]["frozen"]["macro_f1"] == pytest.approx(evaluation.macro_f1)


def test_the_panel_report_of_a_session(field, backbone):
    session = embedded_session(field, backbone)
    plan = reports.session_plan(session, dict(field.cell_class), list(CLASSES), "logistic", 2)
    assert plan.embeddings_name == "frozen" and len(plan.classes) == len(field.cell_class)
    report = reports.build_report(plan)
    # the chosen features, the classic baseline on the same folds (computed in the worker), the curve
    assert set(report.evaluations) == {"frozen", "classic"} and plan.baseline.shape[0] == len(plan.classes)
    assert all(path.is_file() for path in report.pictures.values()) and len(report.pictures) == 3
    text = reports.report_text(report, plan, reports.model_description(session))
    assert f"Cells: {len(field.cell_class)} annotated" in text and "random-tiny" in text
    assert "classic features" in text
    with pytest.raises(DinolocError, match="No annotated cells"):
        reports.session_plan(session, {}, list(CLASSES), "logistic", 2)


def test_compare_frozen_vs_finetuned_through_the_plan(field, backbone):
    image = make_cell_image(field.image, field.stains, name="fov")
    cells = [(image, field.labels, dict(field.cell_class))]
    plan = reports.EvaluationPlan(None, [], None, "logistic", 2, fine_tune=(cells, lambda: backbone, EMBED, QUICK))
    report = reports.evaluate(plan, curve=False)
    assert list(report.evaluations) == ["frozen", "finetuned"] and report.curve == []
    assert all(e.n_cells == len(field.cell_class) for e in report.evaluations.values())
    assert "== fine-tuned ==" in reports.comparison_text(report)


# ---- fine-tuning ----------------------------------------------------------------------------------
def test_finetune_to_file_adds_the_suffix_and_sums_up_the_run(field, files, jobs, options, backbone, tmp_path):
    images = training.annotated_images(jobs, options, files / "cells.csv")
    run = finetuning.finetune_to_file(images, lambda: backbone, EMBED, QUICK, tmp_path / "tuned")
    assert run.path == tmp_path / "tuned.dinoloc" and run.base is backbone
    bundle = load_bundle(run.path)
    assert bundle.weights_hash.startswith("finetuned:") and bundle.extra["finetune"]["level"] == "last-blocks"
    assert finetuning.file_summary(run.result, run.path).startswith(
        f"{run.path}: last-blocks fine-tuning on {len(field.cell_class)} cells")
    assert "validation macro-F1" in finetuning.run_summary(run.result)
    assert " after 1 epoch; best epoch " in finetuning.epochs_title(run.result)


def test_the_fine_tuned_backbone_embeds_the_session_and_fine_tunes_again_from_its_base(field, backbone):
    session = embedded_session(field, backbone)
    run = finetuning.finetune_run([(session.image, field.labels, dict(field.cell_class))], lambda: backbone, EMBED, QUICK)
    tuned, embeddings = finetuning.embed_with_run(session, run)
    assert is_fine_tuned(tuned) and not is_fine_tuned(backbone)
    assert len(embeddings.labels) == n_cells(field)
    session.set_backbone(tuned)
    session.set_embeddings(embeddings)
    load_base, settings = finetuning.starting_point(session)
    assert settings.crop_size == 48
    assert load_base() is backbone  # fine-tuning again starts from the weights as loaded
    with pytest.raises(DinolocError, match="Nothing fine-tuned yet"):
        finetuning.require_run(None)


# ---- images and cells -------------------------------------------------------------------------------
def test_channels_from_layers_make_the_same_image_as_the_file(field, files):
    from_file = load_cell_image(files / "field_000.tif", "nucleus=0,protein=1")
    spare = np.zeros_like(field.image[:1])
    data = np.concatenate([field.image, spare])
    from_layers = image_from_channels(data, ["nucleus", "protein", NOT_USED], "field_000")
    assert from_layers.stains == from_file.stains == ("nucleus", "protein")
    np.testing.assert_array_equal(from_layers.data, from_file.data)
    with pytest.raises(DinolocError, match="No channel is marked as the protein"):
        image_from_channels(data, ["nucleus", "other", NOT_USED], "field_000")
    with pytest.raises(DinolocError, match="two channels"):
        image_from_channels(data, ["protein", "protein", NOT_USED], "field_000")


def test_write_cells_and_embeddings(field, jobs, options, backbone, tmp_path):
    written = list(cell_files.write_cells(jobs, options, tmp_path))
    assert [(p.name, n) for p, n in written] == [("field_000_cells.tif", n_cells(field))]
    assert len(read_table(tmp_path / "field_000_cells.csv")) == n_cells(field)
    assert cell_files.write_embeddings(jobs, options, backbone, tmp_path / "e.npz") == (n_cells(field), 1)
    assert [p.name for p, _ in cell_files.write_cells(jobs, options, tmp_path / "new" / "folder")] == ["field_000_cells.tif"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DinolocError, match="is a file"):
        list(cell_files.write_cells(jobs, options, tmp_path / "a-file"))


def test_exports_of_one_session(field, backbone, tmp_path):
    from napari_dinoloc.core.embedding_files import load_embeddings

    session = embedded_session(field, backbone)
    path = cell_files.export_cells(session, tmp_path / "c.csv", {1: "cytoplasm"})
    rows = read_table(path)
    assert len(rows) == n_cells(field) and [r["user_label"] for r in rows if r["user_label"]] == ["cytoplasm"]
    saved = load_embeddings(cell_files.export_embeddings(session, tmp_path / "e.npz"))
    assert saved["vectors"].shape == session.embeddings.vectors.shape and set(saved["image"]) == {"field_000"}
    empty = Session()
    with pytest.raises(DinolocError, match="No image yet"):
        cell_files.export_cells(empty, tmp_path / "x.csv")
