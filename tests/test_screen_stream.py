"""A screen's Parquet, Zarr and AnnData are written shard by shard (the client never holds the whole run)
and equal what ``merge_run`` (the whole run in memory) gives with the whole-table writers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest

from napari_dinoloc.cli import main
from napari_dinoloc.core import screen
from napari_dinoloc.core.batch import RunOptions
from napari_dinoloc.core.embedding import EmbedSettings
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.screen import _merge
from napari_dinoloc.core.workflows.cell_outputs import ExtraOutputs, run_description, write_extra_outputs

anndata = pytest.importorskip("anndata")
pytest.importorskip("pyarrow")
zarr = pytest.importorskip("zarr")

TINY = ["--backbone", "random-tiny", "--crop-size", "64", "--channels", "nucleus=0,protein=1"]
CARD = {"command": "predict", "backbone": None, "model": "model.dinoloc"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Three fields with label images, a model trained on them, and a manifest of 6 images on two plates
    whose image names repeat (cells are named plate/image:label), with well, site and a treatment."""
    folder = tmp_path_factory.mktemp("stream")
    assert main(["sample", str(folder), "--count", "3", "--size", "256"]) == 0
    images = [str(folder / f"field_00{i}.tif") for i in range(3)]
    labels = [str(folder / f"field_00{i}_labels.tif") for i in range(3)]
    assert main(["train", *images, "--labels", *labels, "--annotations", str(folder / "cells.csv"),
                 "--out", str(folder / "model.dinoloc"), *TINY]) == 0
    with open(folder / "screen.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["plate", "well", "site", "path", "labels", "treatment"])
        for plate in ("P1", "P2"):
            for i in range(3):
                writer.writerow([plate, f"A0{i + 1}", "1", f"field_00{i}.tif", f"field_00{i}_labels.tif",
                                 "dmso" if i == 0 else "drug"])
    return folder


def run_of(out) -> screen.ScreenRun:
    folder = screen.run_folder_for(out)
    return screen.ScreenRun(folder, json.loads((folder / "manifest.json").read_text()))


def screen_run(samples, command, out):
    from napari_dinoloc.core.bundle import load_bundle

    options = RunOptions(stains="nucleus=0,protein=1", embed=EmbedSettings(crop_size=64))
    model = samples / "model.dinoloc"
    if command == screen.PREDICT:
        spec, names = screen.task_spec(command, options, model_path=model), load_bundle(model).class_names
    else:
        spec, names = screen.task_spec(command, options, backbone="random-tiny"), ()
    inputs = screen.screen_inputs([samples / "screen.csv"], channels="nucleus=0,protein=1")
    return screen.screen(inputs, spec, out, class_names=names, executor=screen.SerialExecutor())


def both_ways(run, folder, card=CARD):
    """The streamed outputs in folder/streamed, merge_run's in folder/memory."""
    streamed, memory = folder / "streamed", folder / "memory"
    asked = {name: ExtraOutputs(parquet=f / "cells.parquet", zarr=f / "emb.zarr", h5ad=f / "cells.h5ad")
             for name, f in (("streamed", streamed), ("memory", memory))}
    screen.write_run_outputs(run, asked["streamed"], card)
    merged = screen.merge_run(run)
    about = run_description(card, merged.signatures)
    write_extra_outputs(screen.cell_frame(merged.table), merged.embeddings, asked["memory"], about)
    return streamed, memory, merged


def assert_same_outputs(streamed, memory):
    a, b = screen.read_parquet(streamed / "cells.parquet"), screen.read_parquet(memory / "cells.parquet")
    pd.testing.assert_frame_equal(a, b)
    files = sorted(p.relative_to(streamed / "cells.parquet") for p in (streamed / "cells.parquet").rglob("*.parquet"))
    assert files == sorted(p.relative_to(memory / "cells.parquet") for p in (memory / "cells.parquet").rglob("*.parquet"))
    (va, ia, ta), (vb, ib, tb) = (screen.read_embeddings_zarr(f / "emb.zarr") for f in (streamed, memory))
    assert np.array_equal(va, vb) and ta == tb
    pd.testing.assert_frame_equal(ia, ib)
    za, zb = (zarr.open_group(str(f / "emb.zarr"), mode="r") for f in (streamed, memory))
    assert za["embeddings"].chunks == zb["embeddings"].chunks
    ha, hb = (anndata.read_h5ad(f / "cells.h5ad") for f in (streamed, memory))
    pd.testing.assert_frame_equal(ha.obs, hb.obs)
    pd.testing.assert_frame_equal(ha.var, hb.var)
    assert np.array_equal(ha.X, hb.X) and ha.X.shape == hb.X.shape
    assert np.array_equal(ha.obsm["X_dinoloc"], hb.obsm["X_dinoloc"])
    assert json.dumps(ha.uns["dinoloc"], sort_keys=True, default=str) == json.dumps(hb.uns["dinoloc"], sort_keys=True, default=str)
    return ha


def test_streamed_predict_outputs_equal_the_whole_run_in_memory(samples, tmp_path):
    out = tmp_path / "cells.csv"
    result = screen_run(samples, screen.PREDICT, out)
    streamed, memory, merged = both_ways(result.run, tmp_path)
    adata = assert_same_outputs(streamed, memory)
    # obs: the CSV's rows, in its order, with the manifest's columns; named plate/image:label (names repeat)
    csv_rows = screen.read_cells_csv(out)
    csv_rows["site"] = csv_rows["site"].astype(str)  # pandas reads the CSV's 1 as a number; the manifest's text
    assert adata.n_obs == len(csv_rows) == result.cells > 6
    pd.testing.assert_frame_equal(screen.cell_frame(adata.obs).reset_index(drop=True), csv_rows, check_dtype=False)
    assert list(adata.obs.columns[-4:]) == ["plate", "well", "site", "treatment"]
    assert adata.obs_names[0].startswith("P1/field_000:") and adata.obs_names.is_unique
    assert adata.X.shape[1] == len(adata.var_names) > 1
    assert (streamed / "cells.parquet" / "plate=P2" / "image=field_001").is_dir()


def test_streamed_embed_outputs_have_no_probabilities_and_the_npz_embeddings(samples, tmp_path):
    from napari_dinoloc.core.embedding_files import load_embeddings

    out = tmp_path / "emb.npz"
    result = screen_run(samples, screen.EMBED, out)
    streamed, memory, _ = both_ways(result.run, tmp_path)
    adata = assert_same_outputs(streamed, memory)
    assert adata.X.shape == (result.cells, 0)
    assert np.array_equal(adata.obsm["X_dinoloc"], load_embeddings(out)["vectors"])


def test_zarr_chunks_are_filled_across_images(samples, tmp_path):
    """Chunks smaller and larger than an image: every row lands once, in order."""
    out = tmp_path / "emb.npz"
    run = screen_run(samples, screen.EMBED, out).run
    merged = screen.merge_run(run)
    for rows in (7, 10_000):
        screen.stream_embeddings_zarr(screen.RunCells(run), tmp_path / f"s{rows}.zarr", {}, chunk_rows=rows)
        screen.write_embeddings_zarr(merged.embeddings, merged.table, tmp_path / f"m{rows}.zarr", {}, chunk_rows=rows)
        (va, ia, _), (vb, ib, _) = (screen.read_embeddings_zarr(tmp_path / f"{w}{rows}.zarr") for w in "sm")
        assert np.array_equal(va, vb) and va.shape == (len(merged.table), merged.embeddings.shape[1])
        pd.testing.assert_frame_equal(ia, ib)


def test_the_command_line_writes_a_screens_outputs_without_merging_the_run_in_memory(samples, tmp_path, monkeypatch):
    def refuse(run):
        raise AssertionError("merge_run holds the whole run in memory")

    monkeypatch.setattr(_merge, "merge_run", refuse)
    monkeypatch.setattr(screen, "merge_run", refuse)
    out = tmp_path / "cli" / "cells.csv"
    assert main(["predict", str(samples / "screen.csv"), "--model", str(samples / "model.dinoloc"), "--out", str(out),
                 "--channels", "nucleus=0,protein=1", "--no-cache", "--parquet", str(tmp_path / "cli" / "cells.parquet"),
                 "--zarr", str(tmp_path / "cli" / "emb.zarr"), "--h5ad", str(tmp_path / "cli" / "cells.h5ad")]) == 0
    monkeypatch.undo()
    card = {"command": "predict", "backbone": None, "model": str(samples / "model.dinoloc")}
    _, memory, _ = both_ways(run_of(out), tmp_path, card)
    adata = assert_same_outputs(tmp_path / "cli", memory)
    assert adata.uns["dinoloc"]["model"]["command"] == "predict"


def test_a_repeated_image_of_one_plate_is_refused_by_name(tmp_path):
    from napari_dinoloc.core.screen._h5ad_stream import _name_prefix

    assert _name_prefix([("P1", "a", 1), ("P2", "a", 1)]) is True
    assert _name_prefix([(None, "a", 1), (None, "b", 1)]) is False
    with pytest.raises(DinolocError, match="P1/a:3"):
        _name_prefix([("P1", "a", 1), ("P1", "a", 3)])
