"""The npe2 manifest: it validates, its widgets import, the sample opens, the writer writes the CSV."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from napari_dinoloc._writer import write_cells_csv
from napari_dinoloc.core.table import columns, read_table

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"


def test_npe2_validate_passes():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run([str(npe2), "validate", "napari-dinoloc"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_manifest_is_a_link_to_the_top_level_one():
    packaged = ROOT / "src" / "napari_dinoloc" / "napari.yaml"
    assert packaged.is_symlink() and packaged.resolve() == MANIFEST.resolve()


def test_widgets_and_commands_resolve():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert set(widgets) == {"DINO localization", "Cell UMAP", "Cell gallery"}
    python_names = {c.id: c.python_name for c in manifest.contributions.commands}
    assert python_names[widgets["DINO localization"]] == "napari_dinoloc.widgets.dock:DinolocWidget"
    assert python_names[widgets["Cell UMAP"]] == "napari_dinoloc.widgets.umap_panel:UmapWidget"
    assert python_names[widgets["Cell gallery"]] == "napari_dinoloc.widgets.gallery_panel:GalleryWidget"
    manifest.validate_imports()  # every python_name imports


def test_manifest_name_is_the_distribution_name():
    assert yaml.safe_load(MANIFEST.read_text())["name"] == "napari-dinoloc"


@pytest.mark.gui
def test_sample_opens_with_its_ground_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-dinoloc", "synthetic")
    assert [layer.name for layer in viewer.layers] == ["nucleus", "protein", "ground truth cells"]
    truth = viewer.layers["ground truth cells"]
    assert set(truth.features["label"]) == set(np.unique(truth.data[truth.data > 0]))
    assert viewer.layers["protein"].metadata["dinoloc_class_names"]


def features_of_two_cells():
    return pd.DataFrame({
        "index": [1, 2], "label": [1, 2], "predicted_class": ["a", "b"], "confidence": [0.9, 0.6],
        "user_label": ["a", ""], "prob_a": [0.9, 0.4], "prob_b": [0.1, 0.6],
        "centroid_y": [2.0, 5.0], "centroid_x": [2.0, 5.0], "area": [4, 4], "image": ["img", "img"],
        "backbone": ["random-tiny"] * 2, "weights_hash": ["random:0"] * 2, "strategy": ["natural"] * 2,
    })


def test_writer_writes_the_documented_columns(tmp_path):
    labels = np.zeros((8, 8), np.int32)
    written = write_cells_csv(str(tmp_path / "cells.csv"), labels, {"features": features_of_two_cells(), "name": "cells"})
    rows = read_table(written[0])
    assert list(rows[0]) == columns(["a", "b"])
    assert [r["user_label"] for r in rows] == ["a", ""] and rows[1]["prob_b"] == "0.6"


def test_writer_without_features_writes_geometry(tmp_path):
    labels = np.zeros((8, 8), np.int32)
    labels[1:3, 1:3] = 1
    labels[5:7, 4:8] = 2
    rows = read_table(write_cells_csv(str(tmp_path / "cells"), labels, {"name": "my cells"})[0])
    assert [(r["label"], r["area"], r["image"]) for r in rows] == [("1", "4", "my cells"), ("2", "8", "my cells")]


def test_writer_is_atomic(tmp_path):
    target = tmp_path / "cells.csv"
    target.write_text("previous content")
    with pytest.raises(OSError, match="disk full"):
        write_cells_csv(str(target), np.zeros((8, 8), np.int32), {"features": _Exploding(features_of_two_cells())})
    assert target.read_text() == "previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["cells.csv"]


class _Exploding:
    """Features whose second row fails while the file is being written."""

    def __init__(self, frame):
        self.frame, self.columns = frame, frame.columns

    def __len__(self):
        return len(self.frame)

    def to_dict(self, orient):
        rows = self.frame.to_dict(orient)
        return [rows[0], _ExplodingRow(rows[1])]


class _ExplodingRow(dict):
    def get(self, key, default=None):
        if key == "strategy":
            raise OSError("disk full")
        return super().get(key, default)


@pytest.mark.gui
def test_writer_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((8, 8), np.int32)
    labels[1:3, 1:3] = 1
    labels[5:7, 5:7] = 2
    layer = viewer.add_labels(labels, name="cells", features=features_of_two_cells())
    from napari.plugins.io import save_layers

    written = save_layers(str(tmp_path / "out.csv"), [layer], plugin="napari-dinoloc")
    assert written and len(read_table(written[0])) == 2


def test_main_job_opens_napari_with_the_dock_and_the_sample(qtbot):
    """README's main command with a display: the sample's layers and both docks."""
    from napari_dinoloc.launch import open_viewer_with_sample

    viewer = open_viewer_with_sample(run=False)
    try:
        assert {"nucleus", "protein", "ground truth cells"} <= {layer.name for layer in viewer.layers}
        docks = " ".join(viewer.window.dock_widgets)
        assert "DINO localization" in docks and "Cell UMAP" in docks
    finally:
        from qtpy.QtCore import QThreadPool

        # let the docks' short start-up workers (device lookup) end before their signals go away
        qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=30000)
        viewer.close()
