"""The merged run as Parquet, Zarr and AnnData, written shard by shard: the client holds one image's cells
(rows and embeddings) at a time, never the whole run (``merge_run`` does; these give the same files).

``RunCells`` walks the complete shards in input order and gives each image's cells as the typed frame
``cell_frame`` makes of the whole table (same columns, types and row numbers), with its embeddings.
The AnnData file is ``_h5ad_stream``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import DinolocError
from ._merge import _metadata, check_complete, metadata_columns
from ._run import ScreenRun, read_shard
from .outputs import (
    PLACE_COLUMNS, ZARR_CHUNK_ROWS, cell_frame, json_safe, replaced_folder, require, zarr_array,
)


class RunCells:
    """The cells of a complete run, one image (shard) at a time, in the merged CSV's order."""

    def __init__(self, run: ScreenRun):
        self.run = run
        self.done = check_complete(run)  # hashes every shard: once
        self.keys = [k for k in self.done if int(run.status(k).get("cells", 0)) > 0]
        self.counts = [int(run.status(k)["cells"]) for k in self.keys]
        owner = {key: item["key"] for key, item in run.shards()}
        self.inputs = [owner[k] for k in self.keys]  # the input (image) of each shard: a tiled image has several
        self.cells = sum(self.counts)
        if not self.cells:
            raise DinolocError(f"The run in {run.folder} has no image with cells to write.")
        widths = sorted({int(run.status(k)["width"]) for k in self.keys})
        if len(widths) > 1:
            raise DinolocError(f"Embeddings of different sizes {widths} cannot share one file: use one backbone and strategy.")
        self.width = widths[0]
        self._metadata, self._metadata_columns = _metadata(run), metadata_columns(run)
        self.columns: Optional[list] = None  # the first image's columns (all images of a run share them)

    def frames(self, vectors: bool = False) -> Iterator[tuple]:
        """(offset of the image's first row, its typed frame indexed by row number, its embeddings or None)."""
        pd = require("pandas")
        offset = 0
        for key, count in zip(self.keys, self.counts):
            shard = read_shard(self.run.shard_path(key), ("rows", "vectors") if vectors else ("rows",))
            rows = shard["rows"]
            if len(rows) != count or (vectors and len(shard["vectors"]) != count):
                raise DinolocError(f"The shard of {key} holds other cells than the run manifest counts ({count}): run "
                                   "the same command again (damaged shards are computed anew).")
            metadata = {c: "" for c in self._metadata_columns} | self._metadata[key]
            frame = pd.DataFrame([{**row, **metadata} for row in rows])
            if self.columns is None:
                self.columns = list(frame.columns)
            frame = cell_frame(frame.reindex(columns=self.columns))
            frame.index = pd.RangeIndex(offset, offset + count)
            yield offset, frame, shard.get("vectors")
            offset += count

    def signatures(self) -> list:
        return [read_shard(self.run.shard_path(k), ("signature",))["signature"] for k in self.done]


# ---- Parquet: one file per image, in the partition folders write_parquet makes -------------------
def stream_parquet(cells: RunCells, path, partition_cols=("plate", "image")) -> Path:
    """As ``outputs.write_parquet`` of the whole table: hive layout, the row number as the index."""
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    written: dict = {}  # partition -> files in it (an image name repeated without a plate shares its folder)
    with replaced_folder(path) as folder:
        for _, frame, _ in cells.frames():
            columns = [c for c in partition_cols if c in frame.columns]
            where = tuple(frame[c].iloc[0] for c in columns)
            n = written[where] = written.get(where, -1) + 1
            pq.write_to_dataset(pa.Table.from_pandas(frame, preserve_index=True), folder,
                                partition_cols=columns or None,
                                basename_template="cells-{i}.parquet" if n == 0 else f"cells-{n}-{{i}}.parquet")
    return Path(path)


# ---- Zarr: arrays of the run's size, filled a whole chunk at a time -------------------------------
class _ChunkFiller:
    """Rows appended in order, written to ``array`` in whole chunks (the last, partial one by ``finish``):
    each chunk is written once, instead of rewritten by every image whose rows fall in it."""

    def __init__(self, array, rows: int):
        self.array, self.rows, self.start, self.pending = array, rows, 0, []

    def add(self, values: np.ndarray) -> None:
        self.pending.append(values)
        if sum(len(v) for v in self.pending) >= self.rows:
            self._write(whole_chunks=True)

    def finish(self) -> None:
        self._write(whole_chunks=False)

    def _write(self, whole_chunks: bool) -> None:
        block = np.concatenate(self.pending)
        cut = len(block) - len(block) % self.rows if whole_chunks else len(block)
        if cut:
            self.array[self.start:self.start + cut] = block[:cut]
        self.start += cut
        self.pending = [block[cut:]]


def stream_embeddings_zarr(cells: RunCells, path, attrs: dict, chunk_rows: int = ZARR_CHUNK_ROWS) -> Path:
    """As ``outputs.write_embeddings_zarr`` of the whole run: embeddings, image, cell_id (and plate, well, site)."""
    zarr = require("zarr")
    rows = max(1, min(int(chunk_rows), cells.cells))
    with replaced_folder(path) as folder:
        group = zarr.open_group(str(folder), mode="w")
        fillers = {}
        for offset, frame, vectors in cells.frames(vectors=True):
            columns = {"embeddings": np.asarray(vectors, dtype=np.float32), "image": frame["image"].to_numpy(),
                       "cell_id": frame["label"].astype(np.int64).to_numpy()}
            columns.update({c: frame[c].to_numpy() for c in PLACE_COLUMNS if c in frame.columns})
            if not fillers:
                fillers = {name: _ChunkFiller(zarr_array(group, name, values, (cells.cells, *values.shape[1:]),
                                                         (rows, *values.shape[1:])), rows)
                           for name, values in columns.items()}
            for name, values in columns.items():
                fillers[name].add(values.astype(object) if values.dtype == object else values)
        for filler in fillers.values():
            filler.finish()
        group.attrs.update(json_safe({"format": "napari-dinoloc embeddings", "cells": cells.cells,
                                      "dim": cells.width, **attrs}))
    return Path(path)


# ---- all of them ----------------------------------------------------------------------------------
def write_run_outputs(run: ScreenRun, outputs, card: dict) -> list[Path]:
    """The asked outputs (``core.workflows.cell_outputs.ExtraOutputs``) of a complete run, streamed; the paths."""
    from ..workflows.cell_outputs import run_description
    from ._h5ad_stream import stream_anndata

    cells = RunCells(run)
    about = run_description(card, cells.signatures())
    written = []
    if outputs.parquet is not None:
        written.append(stream_parquet(cells, outputs.parquet))
    if outputs.zarr is not None:
        written.append(stream_embeddings_zarr(cells, outputs.zarr, about))
    if outputs.h5ad is not None:
        written.append(stream_anndata(cells, outputs.h5ad, about))
    return written
