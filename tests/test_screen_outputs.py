"""Outputs for other tools: Parquet, Zarr and AnnData from dinoloc predict / embed, and the formats on their own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_dinoloc.cli import main
from napari_dinoloc.core.embedding_files import load_embeddings
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.screen import (
    cell_frame, read_cells_csv, read_embeddings_zarr, read_parquet, write_anndata, write_embeddings_zarr,
    write_parquet,
)
from napari_dinoloc.core.table import columns

anndata = pytest.importorskip("anndata")
TINY = ["--backbone", "random-tiny", "--crop-size", "64", "--channels", "nucleus=0,protein=1"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One image predicted (head trained on its annotations) with every output, and embedded alone."""
    folder = tmp_path_factory.mktemp("run")
    assert main(["sample", str(folder), "--count", "1", "--size", "384"]) == 0
    classes = pd.read_csv(folder / "cells.csv")
    classes = classes[classes.groupby("class")["label"].transform("size") >= 2]  # a head needs 2 cells a class
    classes.to_csv(folder / "annotations.csv", index=False)
    image = [str(folder / "field_000.tif"), "--labels", str(folder / "field_000_labels.tif"), *TINY]
    assert main(["predict", *image, "--annotations", str(folder / "annotations.csv"), "--head", "logistic",
                 "--out", str(folder / "cells.csv.out"), "--parquet", str(folder / "cells.parquet"),
                 "--zarr", str(folder / "embeddings.zarr"), "--h5ad", str(folder / "cells.h5ad")]) == 0
    assert main(["embed", *image, "--out", str(folder / "embeddings.npz"), "--h5ad", str(folder / "embedded.h5ad")]) == 0
    return folder


def typed_table(n=6):
    """A per-cell table as the screen runner merges it: docs/csv.md columns plus plate, well, site."""
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1, 1], size=n)
    table = pd.DataFrame({
        "image": ["0001", "0001", "0002", "0002", "0003", "0003"][:n], "label": [1, 2, 1, 2, 1, 2][:n],
        "centroid_y": rng.uniform(0, 100, n).round(2), "centroid_x": rng.uniform(0, 100, n).round(2),
        "area": rng.integers(50, 500, n), "predicted_class": np.where(probabilities[:, 0] > 0.5, "nucleus", "er"),
        "confidence": probabilities.max(axis=1).round(6), "prob_nucleus": probabilities[:, 0].round(6),
        "prob_er": probabilities[:, 1].round(6), "user_label": ["", "er", "", "", "", ""][:n],
        "backbone": "random-tiny", "weights_hash": "random:0", "strategy": "natural",
        "plate": [7, 7, 7, 7, 8, 8][:n], "well": ["A01", "A01", "B02", "B02", "A01", "A01"][:n], "site": [1] * n,
    })
    return table, rng.normal(size=(n, 5)).astype(np.float32)


# ---- from the command line ----------------------------------------------------------------------------
def test_anndata_of_predict_has_the_csv_rows_and_the_embeddings_of_embed(run):
    csv = pd.read_csv(run / "cells.csv.out", dtype=str, keep_default_na=False)
    adata = anndata.read_h5ad(run / "cells.h5ad")
    obs = adata.obs
    assert len(obs) == len(csv) > 5
    assert list(obs.index) == [f"{i}:{c}" for i, c in zip(csv["image"], csv["label"])]
    assert obs["label"].tolist() == csv["label"].astype(int).tolist()
    assert obs["predicted_class"].astype(str).tolist() == csv["predicted_class"].tolist()
    assert list(obs.columns) == columns(list(adata.var_names))
    probabilities = csv[[f"prob_{c}" for c in adata.var_names]].astype(float).to_numpy()
    np.testing.assert_allclose(adata.X, probabilities, atol=1e-6)  # X: the class probabilities
    assert adata.var["column"].tolist() == [f"prob_{c}" for c in adata.var_names]
    embedded = load_embeddings(run / "embeddings.npz")
    assert embedded["label"].tolist() == obs["label"].tolist()
    assert np.allclose(adata.obsm["X_dinoloc"], embedded["vectors"], atol=1e-5)
    about = adata.uns["dinoloc"]
    assert about["model"]["head"] == "logistic" and about["model"]["backbone"] == "random-tiny"
    assert about["settings"]["strategy"] == "natural" and about["settings"]["crop_size"] == 64


def test_parquet_and_zarr_of_predict_equal_the_csv_and_the_embeddings(run):
    table = read_cells_csv(run / "cells.csv.out")
    back = read_parquet(run / "cells.parquet")
    pd.testing.assert_frame_equal(back, table)
    assert (run / "cells.parquet" / "image=field_000").is_dir()  # partitioned by image (no plate column here)
    vectors, index, attrs = read_embeddings_zarr(run / "embeddings.zarr")
    assert np.allclose(vectors, load_embeddings(run / "embeddings.npz")["vectors"], atol=1e-5)
    assert index["cell_id"].tolist() == table["label"].tolist() and set(index["image"]) == {"field_000"}
    assert attrs["model"]["backbone"] == "random-tiny" and attrs["cells"] == len(table)


def test_anndata_of_embed_has_no_probabilities_but_the_embeddings(run):
    adata = anndata.read_h5ad(run / "embedded.h5ad")
    embedded = load_embeddings(run / "embeddings.npz")
    assert adata.X.shape == (len(embedded["label"]), 0)
    assert np.array_equal(adata.obsm["X_dinoloc"], embedded["vectors"])
    assert (adata.obs["predicted_class"].astype(str) == "").all()


def test_aggregate_summarises_the_run_per_image(run, tmp_path, capsys):
    out = tmp_path / "profiles.csv"
    assert main(["aggregate", str(run / "cells.h5ad"), "--by", "image", "--out", str(out)]) == 0
    profiles = pd.read_csv(out)
    table = read_cells_csv(run / "cells.csv.out")
    assert len(profiles) == 1 and profiles["cells"].tolist() == [len(table)]
    for name in table["predicted_class"].unique():
        assert profiles[f"fraction_{name}"].iloc[0] == pytest.approx((table["predicted_class"] == name).mean())
    vectors = load_embeddings(run / "embeddings.npz")["vectors"]
    emb = profiles[[c for c in profiles.columns if c.startswith("emb_")]].to_numpy()[0]
    np.testing.assert_allclose(emb, np.median(vectors, axis=0), atol=1e-5)
    # The CSV with the .npz gives the same profiles as the .h5ad.
    again = tmp_path / "again.csv"
    assert main(["aggregate", str(run / "cells.csv.out"), "--embeddings", str(run / "embeddings.npz"),
                 "--by", "image", "--out", str(again)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(again), profiles, atol=1e-5)


def test_aggregate_by_a_missing_column_says_which_it_has(run, tmp_path, capsys):
    assert main(["aggregate", str(run / "cells.h5ad"), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "no column plate, well" in err and "image" in err and not (tmp_path / "p.csv").exists()


# ---- the formats on their own ---------------------------------------------------------------------------
def test_parquet_round_trip_is_partitioned_by_plate_and_image_and_rewrites_cleanly(tmp_path):
    table, _ = typed_table()
    path = tmp_path / "cells.parquet"
    write_parquet(table, path)
    assert sorted(p.name for p in path.iterdir()) == ["plate=7", "plate=8"]
    assert (path / "plate=7" / "image=0002").is_dir()
    pd.testing.assert_frame_equal(read_parquet(path), cell_frame(table))
    assert read_parquet(path)["image"].tolist() == table["image"].tolist()  # "0001" stays text
    write_parquet(table.iloc[:4], path)  # written again: replaced, no rows left over from the first
    pd.testing.assert_frame_equal(read_parquet(path), cell_frame(table.iloc[:4]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_csv_read_back_has_the_types_of_the_table(tmp_path):
    table, _ = typed_table()
    table.to_csv(tmp_path / "cells.csv", index=False)
    pd.testing.assert_frame_equal(read_cells_csv(tmp_path / "cells.csv"), cell_frame(table))
    assert read_cells_csv(tmp_path / "cells.csv")["label"].dtype == np.int64


def test_zarr_embeddings_are_chunked_by_cells_with_their_index(tmp_path):
    zarr = pytest.importorskip("zarr")
    table, vectors = typed_table()
    path = write_embeddings_zarr(vectors, table, tmp_path / "e.zarr", {"model": {"backbone": "x", "crop": None}},
                                 chunk_rows=4)
    back, index, attrs = read_embeddings_zarr(path)
    assert np.array_equal(back, vectors)
    assert index["image"].tolist() == table["image"].tolist() and index["cell_id"].tolist() == table["label"].tolist()
    assert index["well"].tolist() == table["well"].tolist() and index["plate"].tolist() == table["plate"].tolist()
    assert zarr.open_group(str(path), mode="r")["embeddings"].chunks == (4, 5)
    assert attrs["model"] == {"backbone": "x", "crop": None} and attrs["dim"] == 5


def test_anndata_names_cells_uniquely_and_keeps_umap_and_json_safe_uns(tmp_path):
    table, vectors = typed_table()
    umap = np.arange(12, dtype=np.float32).reshape(6, 2)
    uns = {"model": {"classes": ("nucleus", "er"), "f1": np.float64(0.5), "crop": None, "mixed": [1, "a"]}}
    adata = anndata.read_h5ad(write_anndata(table, vectors, tmp_path / "a.h5ad", uns, umap=umap))
    assert list(adata.obs_names) == [f"{i}:{c}" for i, c in zip(table["image"], table["label"])]
    assert isinstance(adata.obs["well"].dtype, pd.CategoricalDtype) and adata.obs["plate"].tolist() == table["plate"].tolist()
    assert np.array_equal(adata.obsm["X_umap"], umap) and np.array_equal(adata.obsm["X_dinoloc"], vectors)
    model = adata.uns["dinoloc"]["model"]
    assert list(model["classes"]) == ["nucleus", "er"] and model["f1"] == 0.5 and "crop" not in model
    assert model["mixed"] == '[1, "a"]'


def test_anndata_refuses_repeated_cells_and_mismatched_embeddings(tmp_path):
    table, vectors = typed_table()
    twice = pd.concat([table, table.iloc[:1]]).drop(columns="plate")
    with pytest.raises(DinolocError, match="0001:1 appears more than once"):
        write_anndata(twice, np.vstack([vectors, vectors[:1]]), tmp_path / "a.h5ad", {})
    with pytest.raises(DinolocError, match="6 rows but there are 5 embeddings"):
        write_anndata(table, vectors[:5], tmp_path / "a.h5ad", {})
    assert not list(tmp_path.iterdir())


def test_aggregate_of_a_run_folder_centres_on_the_named_controls(tmp_path, capsys):
    table, vectors = typed_table()
    run = tmp_path / "run"
    write_anndata(table, vectors, run / "cells.h5ad", {})
    out = tmp_path / "wells.csv"
    assert main(["aggregate", str(run), "--controls", "well=A01", "--out", str(out)]) == 0
    wells = pd.read_csv(out, dtype={"well": str})
    assert wells[["plate", "well", "control", "cells"]].values.tolist() == [
        [7, "A01", True, 2], [7, "B02", False, 2], [8, "A01", True, 2]]
    emb = wells[[c for c in wells.columns if c.startswith("emb_")]].to_numpy()
    np.testing.assert_allclose(emb[wells["control"]], 0, atol=1e-6)
    expected = np.median(vectors[2:4], axis=0) - np.median(vectors[:2], axis=0)
    np.testing.assert_allclose(emb[1], expected, atol=1e-5)
    assert "3 profiles of 6 cells" in capsys.readouterr().out
