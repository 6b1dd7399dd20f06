"""The predict step's AnnData export: one image's cells, predictions and embeddings in a file scanpy opens."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401

from napari_dinoloc.core.backbones import load_backbone
from napari_dinoloc.core.embedding import EmbedSettings
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.pipeline import Session
from napari_dinoloc.core.synthetic import make_field

anndata = pytest.importorskip("anndata")
pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


def test_export_anndata_button_writes_a_readable_h5ad(qtbot, tmp_path):
    from napari_dinoloc.widgets.predict_panel import ExportBox

    field = make_field(seed=3, shape=(256, 256), classes=("nucleoplasm", "cytoplasm"))
    session = Session()
    session.set_image(make_cell_image(field.image, field.stains, name="field_003"))
    session.set_labels(field.labels)
    session.set_backbone(load_backbone("random-tiny", device="cpu"))
    session.set_embeddings(session.compute_embeddings(EmbedSettings(crop_size=48, device="cpu")))
    annotations = {int(label): name for label, name in field.cell_class.items()}
    session.set_head(session.train_head("logistic", annotations))
    first = int(session.table.label[0])
    state = SimpleNamespace(session=session, annotations=SimpleNamespace(annotations={first: "cytoplasm"}),
                            image_path=None)
    box = ExportBox(state, dict)
    qtbot.addWidget(box)
    from qtpy.QtWidgets import QPushButton

    assert "AnnData…" in [button.text() for button in box.findChildren(QPushButton)]

    adata = anndata.read_h5ad(box.export_anndata(str(tmp_path / "field_003.h5ad")))
    labels = [int(label) for label in session.table.label]
    assert adata.obs["label"].tolist() == labels
    assert list(adata.obs_names) == [f"field_003:{label}" for label in labels]
    assert np.array_equal(adata.obsm["X_dinoloc"], session.embeddings.vectors)
    assert list(adata.var_names) == list(session.predictions.class_names)
    np.testing.assert_allclose(adata.X, session.predictions.probabilities, atol=1e-6)
    assert adata.obs["user_label"].astype(str).tolist()[0] == "cytoplasm"
    assert adata.uns["dinoloc"]["model"]["head"] == "logistic"
    assert adata.uns["dinoloc"]["settings"]["crop_size"] == 48
