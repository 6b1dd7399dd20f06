"""Screens (issue 12): a Dask run survives a killed worker, resumes, recomputes damaged shards, carries a
manifest's metadata into the outputs, and reads OME-Zarr; its merged outputs equal the plain loop's."""

from __future__ import annotations

import csv
import os
import signal

import numpy as np
import pytest
import tifffile

from napari_dinoloc.cli import main
from napari_dinoloc.core import screen
from napari_dinoloc.core.batch import RunOptions
from napari_dinoloc.core.embedding import EmbedSettings
from napari_dinoloc.core.embedding_files import load_embeddings
from napari_dinoloc.core.errors import Cancelled, DinolocError
from napari_dinoloc.core.progress import CancelToken
from napari_dinoloc.core.synthetic import make_field
from napari_dinoloc.core.table import columns, read_table

distributed = pytest.importorskip("distributed")

TINY = ["--backbone", "random-tiny", "--crop-size", "64", "--channels", "nucleus=0,protein=1"]
FIELDS = 6


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    """Six small synthetic fields (no label images: each task segments, so it takes a moment)."""
    folder = tmp_path_factory.mktemp("fields")
    for seed in range(FIELDS):
        tifffile.imwrite(folder / f"field_{seed}.tif", make_field(seed=seed, shape=(256, 256)).image)
    return sorted(folder.glob("*.tif"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    samples = tmp_path_factory.mktemp("samples")
    assert main(["sample", str(samples), "--count", "3", "--size", "256"]) == 0
    path = samples / "model.dinoloc"
    images = [str(samples / f"field_00{i}.tif") for i in range(3)]
    labels = [str(samples / f"field_00{i}_labels.tif") for i in range(3)]
    assert main(["train", *images, "--labels", *labels, "--annotations", str(samples / "cells.csv"),
                 "--out", str(path), *TINY]) == 0
    return path


@pytest.fixture(scope="module")
def client():
    """One LocalCluster of 2 worker processes for the module (starting one takes seconds)."""
    with screen.dask_client(workers=2) as dask_client:
        yield dask_client


def options():
    return RunOptions(stains="nucleus=0,protein=1", embed=EmbedSettings(crop_size=64))


def predict_spec(model):
    from napari_dinoloc.core.bundle import load_bundle

    return screen.task_spec(screen.PREDICT, options(), model_path=model), load_bundle(model).class_names


def run(fields, model, out, executor, **kwargs):
    spec, class_names = predict_spec(model)
    return screen.screen(screen.screen_inputs(fields), spec, out, class_names=class_names, executor=executor, **kwargs)


@pytest.fixture(scope="module")
def plain_csv(fields, model, tmp_path_factory):
    """Today's plain loop (core/batch.py, no Dask, no shards): the reference every run must equal."""
    out = tmp_path_factory.mktemp("plain") / "plain.csv"
    assert main(["predict", *map(str, fields), "--model", str(model), "--out", str(out), "--no-cache",
                 "--channels", "nucleus=0,protein=1"]) == 0
    return out


class KillingExecutor(screen.DaskExecutor):
    """Kills one worker process (SIGKILL, by pid) as soon as the first shard is in."""

    killed = None

    def results(self, tasks, spec):
        for result in super().results(tasks, spec):
            if self.killed is None:
                pids = self.client.run(os.getpid)
                self.killed = next(pid for pid in pids.values() if pid != result.pid)
                os.kill(self.killed, signal.SIGKILL)
            yield result


def worker_threads():
    """On a worker, as the first model load does: set torch's threads to the worker's share; what torch uses."""
    import torch

    from napari_dinoloc.core.screen._threads import use_worker_share

    return use_worker_share(), torch.get_num_threads(), os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_each_worker_runs_torch_on_its_share_of_the_cores(client):
    """Not Dask's one thread per worker: cores // workers (one worker on 2 cores: 2 threads), and no
    MALLOC_TRIM_THRESHOLD_ (it made every large tensor a fresh mmap, 3x slower)."""
    import torch
    from dask.system import CPU_COUNT

    both = [client.submit(worker_threads, workers=[address], pure=False).result() for address in client.run(os.getpid)]
    assert both == [(max(1, CPU_COUNT // 2), max(1, CPU_COUNT // 2), None)] * 2
    with screen.dask_client(workers=1) as one:
        assert one.submit(worker_threads, pure=False).result() == (CPU_COUNT, CPU_COUNT, None)
        assert list(one.run(torch.get_num_threads).values()) == [CPU_COUNT]
        assert list(one.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == [str(CPU_COUNT)]


def test_a_killed_worker_is_retried_and_every_cell_appears_once(fields, model, plain_csv, client, tmp_path):
    executor = KillingExecutor(client)
    result = run(fields, model, tmp_path / "killed.csv", executor)
    assert executor.killed is not None
    with pytest.raises(ProcessLookupError):
        os.kill(executor.killed, 0)  # the worker is gone; its tasks ran elsewhere
    assert sorted(result.summary.computed) == sorted(i.key for i in screen.screen_inputs(fields).images)
    rows = read_table(tmp_path / "killed.csv")
    cells = [(r["image"], r["label"]) for r in rows]
    assert len(cells) == len(set(cells)) == result.cells > FIELDS
    assert {r["image"] for r in rows} == {f.stem for f in fields}
    assert (tmp_path / "killed.csv").read_bytes() == plain_csv.read_bytes()


def test_an_interrupted_run_resumes_with_only_the_missing_shards(fields, model, plain_csv, client, tmp_path):
    out, token = tmp_path / "resumed.csv", CancelToken()

    def cancel_after_two(done, total, what):
        if done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        run(fields, model, out, screen.DaskExecutor(client), progress=cancel_after_two, cancel=token)
    assert not out.exists()
    folder = screen.run_folder_for(out)
    keys = [i.key for i in screen.screen_inputs(fields).images]
    done_before = {k for k in keys if (folder / f"{k}.npz.sha256").is_file()}
    assert 2 <= len(done_before) < FIELDS
    with pytest.raises(DinolocError, match="not complete"):  # the merge refuses, naming what is missing
        screen.write_csv(screen.ScreenRun(folder, __import__("json").loads((folder / "manifest.json").read_text())),
                         tmp_path / "early.csv", ())

    result = run(fields, model, out, screen.DaskExecutor(client))
    assert set(result.summary.computed) == set(keys) - done_before
    assert set(result.summary.reused) == done_before
    assert out.read_bytes() == plain_csv.read_bytes()
    again = run(fields, model, out, screen.SerialExecutor())  # idempotent: nothing to do, same file
    assert again.summary.computed == [] and out.read_bytes() == plain_csv.read_bytes()


def test_a_damaged_shard_is_computed_again(fields, model, plain_csv, tmp_path):
    out = tmp_path / "damaged.csv"
    first = run(fields, model, out, screen.SerialExecutor())
    shard = first.run.shard_path(first.run.keys[3])
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    second = run(fields, model, out, screen.SerialExecutor())
    assert second.summary.computed == [first.run.keys[3]]
    assert out.read_bytes() == plain_csv.read_bytes()


def test_a_changed_setting_is_refused_with_its_name(fields, model, tmp_path):
    out = tmp_path / "p.csv"
    run(fields[:1], model, out, screen.SerialExecutor())
    spec, names = predict_spec(model)
    spec = screen.task_spec(screen.PREDICT, RunOptions(stains="nucleus=0,protein=1",
                                                       embed=EmbedSettings(crop_size=48)), model_path=model)
    with pytest.raises(DinolocError, match=r"embed\.crop_size was 64, now 48"):
        screen.screen(screen.screen_inputs(fields[:1]), spec, out, class_names=names, executor=screen.SerialExecutor())


def test_embed_through_the_cluster_writes_the_plain_embeddings_file(fields, client, tmp_path):
    plain, shards = tmp_path / "plain.npz", tmp_path / "screen.npz"
    assert main(["embed", *map(str, fields[:3]), "--out", str(plain), "--no-cache", *TINY]) == 0
    spec = screen.task_spec(screen.EMBED, options(), backbone="random-tiny")
    screen.screen(screen.screen_inputs(fields[:3]), spec, shards, executor=screen.DaskExecutor(client))
    a, b = load_embeddings(plain), load_embeddings(shards)
    assert list(a["image"]) == list(b["image"]) and np.array_equal(a["label"], b["label"])
    assert np.array_equal(a["vectors"], b["vectors"]) and a["signatures"] == b["signatures"]
    merged = screen.merge_run(screen.ScreenRun(screen.run_folder_for(shards),
                                               __import__("json").loads((screen.run_folder_for(shards) / "manifest.json").read_text())))
    assert len(merged.table) == len(merged.embeddings) == len(a["label"])


def test_a_manifest_carries_its_metadata_into_the_csv(fields, model, plain_csv, tmp_path):
    """Per-stain files in stain columns, plate/well/site and a treatment column."""
    rows = []
    for i, field in enumerate(fields[:2]):
        image = tifffile.imread(field)
        for channel, stain in enumerate(("nucleus", "protein")):
            tifffile.imwrite(tmp_path / f"{field.stem}_{stain}.tif", image[channel])
        rows.append({"protein": f"{field.stem}_protein.tif", "nucleus": f"{field.stem}_nucleus.tif",
                     "treatment": ["dmso", "drug"][i], "well": f"A0{i + 1}", "plate": "P1", "site": "1"})
    manifest = tmp_path / "screen.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "meta.csv"
    assert main(["predict", str(manifest), "--model", str(model), "--out", str(out), "--no-cache"]) == 0
    table = read_table(out)
    class_names = [c[len("prob_"):] for c in table[0] if c.startswith("prob_")]
    assert list(table[0]) == columns(class_names) + ["plate", "well", "site", "treatment"]
    plain = [r for r in read_table(plain_csv) if r["image"] in (fields[0].stem, fields[1].stem)]
    assert len(table) == len(plain)
    for got, want in zip(table, plain):
        assert got["label"] == want["label"] and got["predicted_class"] == want["predicted_class"]
        assert got["treatment"] == ("dmso" if got["image"].startswith(fields[0].stem) else "drug")
        assert got["plate"] == "P1" and got["well"] in ("A01", "A02")


def test_an_ome_zarr_is_read_lazily_and_predicted(fields, model, plain_csv, tmp_path):
    zarr = pytest.importorskip("zarr")
    from ome_zarr.writer import write_image

    window = {"start": 0, "end": 65535, "min": 0, "max": 65535}
    path = tmp_path / "field_0.ome.zarr"
    write_image(tifffile.imread(fields[0]), zarr.open_group(str(path), mode="w"), axes="cyx", scale_factors=(2,),
                omero={"channels": [{"label": "DAPI", "color": "0000FF", "window": window},
                                    {"label": "protein", "color": "00FF00", "window": window}]})
    for chunk in (path / "s1").rglob("c/*"):  # the half-size level is never read: break it
        if chunk.is_file():
            chunk.write_bytes(b"not a chunk")
    from napari_dinoloc.core.images import read_image

    raw = read_image(path)
    assert raw.name == "field_0" and raw.default_stains == ("nucleus", "protein")
    assert np.array_equal(raw.array, tifffile.imread(fields[0]))
    out = tmp_path / "zarr.csv"
    assert main(["predict", str(path), "--model", str(model), "--out", str(out), "--no-cache"]) == 0
    want = [r for r in read_table(plain_csv) if r["image"] == "field_0"]
    assert read_table(out) == want


def test_a_vendor_file_without_its_bioio_plugin_names_the_package(tmp_path):
    from napari_dinoloc.core.images import read_image

    path = tmp_path / "plate.czi"
    path.write_bytes(b"ZISRAWFILE" + bytes(100))
    # with bioio installed the plugin alone is missing; without it both are: either way the plugin is named
    with pytest.raises(DinolocError, match=r"pip install (bioio )?bioio-czi"):
        read_image(path)


def test_a_screen_run_writes_the_per_image_summary_and_anndata_of_the_merged_cells(fields, model, tmp_path):
    anndata = pytest.importorskip("anndata")
    out, h5ad = tmp_path / "screen.csv", tmp_path / "screen.h5ad"
    assert main(["predict", str(fields[0].parent), "--model", str(model), "--out", str(out), "--h5ad", str(h5ad),
                 "--no-cache", "--channels", "nucleus=0,protein=1"]) == 0  # a folder: the screen runner, one process
    rows = read_table(out)
    cells = anndata.read_h5ad(h5ad)
    assert cells.n_obs == len(rows) > 0 and cells.obsm["X_dinoloc"].shape[0] == len(rows)
    assert list(cells.obs["image"].astype(str)) == [r["image"] for r in rows]
    assert list(cells.obs["predicted_class"].astype(str)) == [r["predicted_class"] for r in rows]
    with open(tmp_path / "screen_per_image.csv", newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert sorted(r["image"] for r in summary) == sorted({r["image"] for r in rows}) and len(summary) == FIELDS
    assert sum(int(r["cells"]) for r in summary) == len(rows)


def test_a_walked_folder_of_hpa_per_stain_files_is_screened_as_one_image_per_field(tmp_path):
    import imageio.v3 as iio

    folder = tmp_path / "plate" / "well"
    folder.mkdir(parents=True)
    made = make_field(seed=4, shape=(256, 256)).image  # 16-bit PNGs
    # the protein stands in for the cell stains (microtubules, ER): noise there would be segmented as cells
    for colour, plane in (("blue", made[0]), ("green", made[1]), ("red", made[1]), ("yellow", made[1])):
        iio.imwrite(folder / f"10_A1_1_{colour}.png", plane)
    out = tmp_path / "cells.npz"
    # a folder walked for a screen (the per-stain files grouped as one field): it crashed ('unhashable list')
    assert main(["embed", str(tmp_path / "plate"), "--out", str(out), "--no-cache", "--backbone", "random-tiny"]) == 0
    saved = load_embeddings(out)
    assert set(saved["image"]) == {"10_A1_1"} and len(saved["label"]) > 5


def test_a_misspelt_channel_assignment_is_refused_before_any_image_is_computed(fields, tmp_path, capsys):
    out = tmp_path / "cells.npz"
    assert main(["embed", *map(str, fields[:2]), "--workers", "1", "--out", str(out), "--no-cache",
                 "--backbone", "random-tiny", "--channels", "nucleus=0,cytoplasm=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("Cannot read the channel assignment 'cytoplasm=1'") == 1  # once, not once per image
    assert "Images:" not in err and not (tmp_path / "cells.npz.shards").exists()
