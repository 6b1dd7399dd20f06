"""Screens cut a very large image into tiles (issue 12: one task per tile): the tiles give the untiled image's
cells, each once, in full-image coordinates with per-image cell ids; resume recomputes one lost tile alone;
the per-image summary counts the image once; a tile task never reads the whole file."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from napari_dinoloc.cli import main
from napari_dinoloc.core import screen
from napari_dinoloc.core.batch import RunOptions
from napari_dinoloc.core.embedding import EmbedSettings
from napari_dinoloc.core.embedding_files import load_embeddings
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.synthetic import make_field
from napari_dinoloc.core.table import read_table

SIZE, TILE = 768, 384
CHANNELS = "nucleus=0,protein=1"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    made = make_field(seed=3, shape=(SIZE, SIZE))
    path = folder / "big.tif"
    tifffile.imwrite(path, made.image, tile=(128, 128), compression="zlib")  # read by region, chunk by chunk
    tifffile.imwrite(folder / "big_truth.tif", made.labels.astype(np.int32))
    return path


def embed_spec():
    return screen.task_spec(screen.EMBED, RunOptions(stains=CHANNELS, embed=EmbedSettings(crop_size=64)),
                            backbone="random-tiny")


def embed(field, out, tile, labels=()):
    return screen.screen(screen.screen_inputs([field], labels), embed_spec(), out, executor=screen.SerialExecutor(),
                         tile=tile)


@pytest.fixture(scope="module")
def untiled(field, tmp_path_factory):
    out = tmp_path_factory.mktemp("untiled") / "cells.npz"
    result = embed(field, out, 0)
    return result, load_embeddings(out), screen.merge_run(result.run).table


@pytest.fixture(scope="module")
def tiled(field, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiled") / "cells.npz"
    result = embed(field, out, TILE)
    return result, load_embeddings(out), screen.merge_run(result.run).table


def centroids(table):
    return table[["centroid_y", "centroid_x"]].to_numpy(float)


def test_the_layout_covers_the_image_with_abutting_cores_and_tiles_no_larger_than_asked():
    tiles = screen.tile_layout((1000, 700), 384, 116)
    cores = np.zeros((1000, 700), int)
    for tile in tiles:
        top, bottom, left, right = tile.core
        cores[top:bottom, left:right] += 1
        assert tile.bottom - tile.top <= 384 and tile.right - tile.left <= 384
        assert tile.top <= top and tile.bottom >= bottom and tile.left <= left and tile.right >= right
        inner = [top - tile.top if top else 58, tile.bottom - bottom if bottom < 1000 else 58,
                 left - tile.left if left else 58, tile.right - right if right < 700 else 58]
        assert inner == [58] * 4  # half the overlap on every inner side
    assert (cores == 1).all()  # every pixel in exactly one core: every centroid owned once
    assert [t.index for t in tiles] == list(range(len(tiles))) == list(range(4 * 3))
    assert screen.tile_layout((384, 384), 384, 116)[0].core == (0, 384, 0, 384)  # not larger: one tile
    assert screen.overlap_for(58.0, 32.0) == 116  # 2x the largest cell, even


def test_tiles_give_the_untiled_cells_each_once_in_image_coordinates(untiled, tiled):
    (plain, a, table_a), (cut, b, table_b) = untiled, tiled
    item = cut.run.manifest["inputs"][0]
    assert len(item["tiles"]["tiles"]) == 9 and len(cut.run.keys) == 9 and plain.run.keys == [item["key"]]
    overlap = item["tiles"]["overlap"]
    assert overlap == 116  # 2 x the cells measured (29 px nuclei, cells up to 58 px)
    # measured: 92 cells either way (no tolerance needed for this field; a cell on a core border could at
    # worst be segmented a little differently in the tile, as Otsu sees a different neighbourhood)
    assert len(table_a) == len(table_b) == 92
    from scipy.spatial import cKDTree

    distance, match = cKDTree(centroids(table_a)).query(centroids(table_b))
    assert distance.max() < 1.0 and len(set(match)) == len(match)  # the same cells, one to one
    assert len(np.unique(centroids(table_b), axis=0)) == len(table_b)  # no cell twice
    assert len(set(zip(table_b["image"], table_b["label"]))) == len(table_b)
    # away from the core borders (farther than a cell radius) each cell's tiled embedding is closest to its own
    # untiled one: close, not equal, as each tile finds its own thresholds (Otsu, background) for the outlines
    bounds = sorted({c for t in item["tiles"]["tiles"] for c in t["core"][:2]} - {0, SIZE})
    yx = centroids(table_b)
    away = np.min(np.abs(yx[:, :, None] - np.array(bounds)[None, None, :]), axis=(1, 2)) > 29
    assert away.sum() > 40
    _, nearest = cKDTree(a["vectors"]).query(b["vectors"][away])
    assert np.array_equal(nearest, match[away])
    # ids: tile * TILE_LABELS + number in the tile; the tile's core holds the cell's centroid
    tiles = {t["index"]: t for t in item["tiles"]["tiles"]}
    for label, y, x in zip(table_b["label"], yx[:, 0], yx[:, 1]):
        top, bottom, left, right = tiles[int(label) // screen.TILE_LABELS]["core"]
        assert top <= y < bottom and left <= x < right and int(label) % screen.TILE_LABELS >= 1
    assert np.array_equal(b["label"], table_b["label"].to_numpy()) and set(b["image"]) == {"big"}


def test_a_lost_tile_shard_is_computed_again_alone(field, tiled, tmp_path):
    out = tmp_path / "resume.npz"
    first = embed(field, out, TILE)
    before = out.read_bytes()
    lost = first.run.keys[4]
    first.run.shard_path(lost).unlink()
    again = embed(field, out, TILE)
    assert again.summary.computed == [lost] and len(again.summary.reused) == 8
    assert np.array_equal(load_embeddings(out)["vectors"], load_embeddings(tiled[0].path)["vectors"])
    assert out.read_bytes() == before
    manifest = again.run.manifest
    assert sorted(manifest["shards"]) == sorted(first.run.keys) and manifest["settings"]["tile"] == TILE


def test_a_tile_task_reads_its_region_not_the_whole_file(field, tiled, tmp_path, monkeypatch):
    from napari_dinoloc.core.images import _readers

    def whole(*args, **kwargs):
        raise AssertionError("the whole image was read")

    monkeypatch.setattr(_readers, "read_tiff", whole)
    result = embed(field, tmp_path / "lazy.npz", TILE)
    assert result.cells == len(tiled[2])


def test_with_a_label_image_the_tiles_give_exactly_the_untiled_cells_and_embeddings(field, tmp_path):
    """The same outlines in both runs: what remains (reading by region, scaling, crops, coordinates, ids) is exact."""
    from scipy.spatial import cKDTree

    truth = [field.with_name("big_truth.tif")]
    runs = [embed(field, tmp_path / f"labelled_{tile}.npz", tile, labels=truth) for tile in (0, TILE)]
    (a, table_a), (b, table_b) = [(load_embeddings(r.path), screen.merge_run(r.run).table) for r in runs]
    assert len(runs[1].run.keys) == 9
    assert len(table_a) == len(table_b) == 101  # border cells kept, as an untiled label image keeps them
    distance, match = cKDTree(centroids(table_a)).query(centroids(table_b))
    assert distance.max() < 0.011 and len(set(match)) == len(match)  # centroids to the CSV's 0.01 px
    assert np.allclose(a["vectors"][match], b["vectors"], atol=1e-5)


@pytest.fixture(scope="module")
def model(untiled, tmp_path_factory):
    """A head trained on the untiled embeddings (two classes by position), saved as a bundle."""
    from napari_dinoloc.core.backbones import load_backbone
    from napari_dinoloc.core.bundle import bundle_for_head, save_bundle
    from napari_dinoloc.core.heads import train_head

    _, found, table = untiled
    classes = ["left" if x < SIZE / 2 else "right" for x in table["centroid_x"]]
    head = train_head("logistic", found["vectors"], classes)
    bundle = bundle_for_head(head, load_backbone("random-tiny", device="cpu"), ("nucleus", "protein"),
                             EmbedSettings(crop_size=64), classes)
    return save_bundle(bundle, tmp_path_factory.mktemp("model") / "model")


def test_predict_with_tile_counts_the_tiled_image_once_in_the_summary(field, model, tmp_path):
    for tile in ("0", str(TILE)):
        out = tmp_path / f"cells_{tile}.csv"
        assert main(["predict", str(field), "--model", str(model), "--out", str(out), "--tile", tile,
                     "--channels", CHANNELS, "--no-cache"]) == 0
    plain, cut = read_table(tmp_path / "cells_0.csv"), read_table(tmp_path / f"cells_{TILE}.csv")
    assert len(cut) == len(plain) == 92
    assert len(list(screen.run_folder_for(tmp_path / f"cells_{TILE}.csv").glob("*-tile*.npz"))) == 9
    assert all(r["predicted_class"] in ("left", "right") and r["image"] == "big" for r in cut)
    with open(tmp_path / f"cells_{TILE}_per_image.csv", newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 1 and summary[0]["image"] == "big" and int(summary[0]["cells"]) == 92


def test_tiles_run_on_a_dask_worker_as_in_one_process(field, tiled, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "dask.npz"
    result = screen.screen(screen.screen_inputs([field]), embed_spec(), out, workers=1, tile=TILE)
    assert len(result.summary.computed) == 9 and result.summary.workers and result.cells == len(tiled[2])
    assert np.array_equal(load_embeddings(out)["vectors"], load_embeddings(tiled[0].path)["vectors"])


def test_the_streamed_outputs_of_a_tiled_run_hold_every_cell_once_with_the_merged_rows(tiled, tmp_path):
    import anndata

    from napari_dinoloc.core.workflows.cell_outputs import ExtraOutputs

    result, saved, table = tiled
    outputs = ExtraOutputs(parquet=tmp_path / "cells.parquet", zarr=tmp_path / "cells.zarr", h5ad=tmp_path / "cells.h5ad")
    screen.write_run_outputs(result.run, outputs, {"command": "embed"})
    adata = anndata.read_h5ad(tmp_path / "cells.h5ad")
    assert adata.n_obs == len(table) == len(saved["label"]) and adata.obs_names.is_unique
    assert adata.obs["label"].astype(int).tolist() == table["label"].astype(int).tolist()
    np.testing.assert_array_equal(adata.obsm["X_dinoloc"], saved["vectors"])
    parquet = screen.read_parquet(tmp_path / "cells.parquet")
    assert sorted(parquet["label"].astype(int)) == sorted(table["label"].astype(int))
    vectors, index, _ = screen.read_embeddings_zarr(tmp_path / "cells.zarr")
    np.testing.assert_array_equal(vectors, saved["vectors"])
    assert index["cell_id"].tolist() == table["label"].astype(int).tolist()


def test_an_image_with_a_skipped_tile_is_left_out_whole_not_half_merged(tiled):
    run = tiled[0].run
    shards = dict(run.manifest["shards"])
    try:
        assert len(screen.check_complete(run)) == 9
        run.manifest["shards"][run.keys[4]] = {"status": "skipped", "reason": "unreadable region"}
        assert screen.check_complete(run) == []  # none of the other 8 tiles' cells
    finally:
        run.manifest["shards"] = shards


def test_tiles_stay_inside_the_image_and_a_tile_too_small_for_its_overlap_is_refused():
    for shape, tile, overlap in (((1728, 1728), 1200, 590), ((1000, 700), 384, 116), ((5000, 300), 700, 350)):
        for t in screen.tile_layout(shape, tile, overlap):
            assert 0 <= t.top < t.bottom <= shape[0] and 0 <= t.left < t.right <= shape[1]
            assert t.bottom - t.top <= tile and t.right - t.left <= tile
    # measured on the real HPA field: cells up to 295 px, so a 768-px tile made 100 tiles reaching outside it
    with pytest.raises(DinolocError, match="at least 1180"):
        screen.tile_layout((1728, 1728), 768, 590)
