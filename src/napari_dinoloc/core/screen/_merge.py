"""The shards of a complete run merged into today's outputs: the per-cell CSV of ``dinoloc predict``
(same columns and order, the manifest's metadata columns after them) and the embeddings ``.npz`` of
``dinoloc embed``. Both are streamed shard by shard, so merging holds one image's cells at a time.

``merge_run`` is the whole run in memory (the table as a pandas DataFrame, the embeddings as one array)
for scripts on runs that fit; the command line's Parquet, Zarr and AnnData stream instead (``_stream``)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..errors import DinolocError
from ..files import atomic_write
from ._run import DONE, SKIPPED, ScreenRun, read_shard

SHOWN = 8  # missing images named in the message


@dataclass
class MergedRun:
    table: object          # pandas DataFrame: the per-cell rows with the metadata columns
    embeddings: np.ndarray  # (cells, D) float32, rows in table order
    signatures: list        # one embedding signature per image


def check_complete(run: ScreenRun) -> list[str]:
    """The keys of the images with a shard, in input order; refuses while any shard is missing."""
    missing = run.missing()
    if missing:
        shown = ", ".join(missing[:SHOWN]) + (f" (and {len(missing) - SHOWN} more)" if len(missing) > SHOWN else "")
        raise DinolocError(f"The run in {run.folder} is not complete: {len(missing)} image(s) have no shard yet: "
                           f"{shown}. Run the same command again to compute them.")
    # an image with one tile skipped is skipped whole: half an image's cells would read as all of them
    partial = {item["key"] for key, item in run.shards() if run.status(key).get("status") == SKIPPED}
    return [key for key, item in run.shards() if run.status(key).get("status") == DONE and item["key"] not in partial]


def _metadata(run: ScreenRun) -> dict:
    """Shard key -> the metadata of its image (every tile of a tiled image carries its image's)."""
    return {key: item.get("metadata", {}) for key, item in run.shards()}


def metadata_columns(run: ScreenRun) -> list[str]:
    seen: list[str] = []
    for item in run.manifest["inputs"]:
        seen += [c for c in item.get("metadata", {}) if c not in seen]
    return seen


def iter_rows(run: ScreenRun, keys: Sequence[str]) -> Iterator[list[dict]]:
    """Each shard's per-cell rows (an image's, or a tile's in image coordinates), with its metadata, in input order."""
    metadata = _metadata(run)
    for key in keys:
        rows = read_shard(run.shard_path(key), ("rows",))["rows"]
        yield [{**row, **metadata[key]} for row in rows]


def write_csv(run: ScreenRun, out, class_names: Sequence[str], per_image=None) -> int:
    """The per-cell CSV as ``dinoloc predict`` writes it (metadata columns last); returns the cell count.
    ``per_image`` (a ``core.image_summary.ImageSummary``) counts the rows as they stream by."""
    from ..table import CsvTableWriter

    keys = check_complete(run)
    count = 0
    writer = CsvTableWriter(out, class_names)
    writer.fieldnames = writer.fieldnames + metadata_columns(run)
    with writer:
        for rows in iter_rows(run, keys):
            writer.write_rows(rows)
            if per_image is not None:
                per_image.add_rows(rows)
            count += len(rows)
    return count


def write_npz(run: ScreenRun, out) -> int:
    """The embeddings file as ``dinoloc embed`` writes it (``core.embedding_files``), streamed; returns the cells."""
    keys = check_complete(run)
    shards = [run.status(key) for key in keys]
    cells = sum(int(s["cells"]) for s in shards)
    if not keys:
        raise DinolocError(f"The run in {run.folder} has no image with cells to write.")
    widths = sorted({int(s["width"]) for s in shards if int(s["cells"])}) or [0]  # a tile without cells has none
    if len(widths) > 1:
        raise DinolocError(f"Embeddings of different sizes {widths} cannot share one file: use one backbone and strategy.")
    names = [s["image"] for s in shards]
    signatures = [read_shard(run.shard_path(key), ("signature",))["signature"] for key, s in zip(keys, shards)
                  if int(s["cells"])]  # one per image, or per tile of a tiled image
    width = max((len(n) for n in names), default=1)
    with atomic_write(out, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        _stream(archive, "image", np.dtype(f"<U{width}"), (cells,),
                (np.array([name] * int(s["cells"]), dtype=f"<U{width}") for name, s in zip(names, shards)))
        _stream(archive, "label", np.dtype("<i8"), (cells,),
                (read_shard(run.shard_path(k), ("label",))["label"] for k in keys))
        _stream(archive, "vectors", np.dtype("<f4"), (cells, widths[0]),
                (read_shard(run.shard_path(k), ("vectors",))["vectors"] for k, s in zip(keys, shards) if int(s["cells"])))
        with archive.open("signatures.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array(entry, np.array(json.dumps(signatures, default=str)), allow_pickle=False)
    return cells


def _stream(archive: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple, chunks) -> None:
    """One ``.npy`` member written chunk by chunk (np.load reads it as np.savez's)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    written = 0
    with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
        np.lib.format.write_array_header_2_0(entry, header)
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            entry.write(chunk.tobytes())
            written += len(chunk)
    if written != shape[0]:
        raise DinolocError(f"The shards hold {written} cells where the run manifest counts {shape[0]}: run the same "
                           "command again (damaged shards are computed anew).")


def merge_run(run: ScreenRun) -> MergedRun:
    """The whole run in memory: per-cell table (pandas) with metadata, and the embeddings, rows aligned."""
    import pandas as pd

    keys = check_complete(run)
    frames, vectors, signatures = [], [], []
    for key, rows in zip(keys, iter_rows(run, keys)):
        if not rows:  # a tile with no cells of its own
            continue
        shard = read_shard(run.shard_path(key), ("vectors", "signature"))
        frames.append(pd.DataFrame(rows))
        vectors.append(shard["vectors"])
        signatures.append(shard["signature"])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    width = vectors[0].shape[1] if vectors else 0
    embeddings = np.concatenate(vectors) if vectors else np.zeros((0, width), np.float32)
    return MergedRun(table, embeddings, signatures)
