"""The per-cell table and embeddings in the formats other tools read: Parquet, Zarr and AnnData (.h5ad).

Every writer takes the per-cell table (the columns of docs/csv.md plus metadata such as plate, well,
site) as a pandas DataFrame and the embeddings (N, D) in the same row order. Each output appears whole
or not at all: it is written beside its final name and renamed into place. pandas, pyarrow, zarr and
anndata are imported inside the functions (``pip install napari-dinoloc[screen]``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from ..errors import DinolocError
from ..table import LEADING_COLUMNS, TRAILING_COLUMNS

PROB_PREFIX = "prob_"
#: Columns holding whole numbers and text in the per-cell table; the rest of docs/csv.md are decimals.
INTEGER_COLUMNS = ("label", "area")
TEXT_COLUMNS = ("image", "predicted_class", "user_label", *TRAILING_COLUMNS)
DECIMAL_COLUMNS = tuple(c for c in LEADING_COLUMNS if c not in INTEGER_COLUMNS + TEXT_COLUMNS)
#: Columns of the per-cell table that say where a cell comes from (carried into the Zarr index).
PLACE_COLUMNS = ("plate", "well", "site")
EMBEDDINGS_KEY = "X_dinoloc"
ZARR_CHUNK_ROWS = 4096  # rows per chunk: a few MB for ViT widths, so a reader fetches a slice cheaply


def require(module: str):
    """Import an optional package of the ``screen`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise DinolocError(f"Writing or reading this format needs the package {package}: "
                           f"pip install 'napari-dinoloc[screen]' (or pip install {package}).") from None


# ---- the table with the types of docs/csv.md ------------------------------------------------------
def cell_frame(table):
    """A copy of the per-cell table with proper types: text columns as str (missing: ""), labels and areas
    as whole numbers, coordinates, confidences and probabilities as floats (missing: NaN), a fresh row index.
    A CSV read back as text and the table the runner merges thus give the same frame."""
    pd = require("pandas")
    frame = pd.DataFrame(table).reset_index(drop=True).copy()
    for column in frame.columns:
        values = frame[column]
        if isinstance(values.dtype, pd.CategoricalDtype):  # an .h5ad's text columns
            values = values.astype(values.cat.categories.dtype)
        if column in TEXT_COLUMNS or (column not in INTEGER_COLUMNS + DECIMAL_COLUMNS
                                      and not column.startswith(PROB_PREFIX) and values.dtype == object):
            frame[column] = values.fillna("").astype(str)
        elif column in DECIMAL_COLUMNS or column.startswith(PROB_PREFIX):
            frame[column] = _numbers(values).astype(np.float64)
        elif column in INTEGER_COLUMNS:
            numbers = _numbers(values)
            frame[column] = numbers.astype(np.int64) if numbers.notna().all() else numbers
    return frame


def _numbers(values):
    """Numbers of a column; empty text (a CSV's "no prediction yet") is NaN."""
    pd = require("pandas")
    if values.dtype == object:
        values = values.mask(values.astype(str).str.strip() == "")
    return pd.to_numeric(values, errors="coerce")


def read_cells_csv(path):
    """The per-cell CSV (docs/csv.md) as a typed frame: its text columns stay text (image names such as
    ``0001``), other columns (plate, site…) get the type pandas reads them with."""
    pd = require("pandas")
    try:
        table = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str), keep_default_na=False, encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise DinolocError(f"Cannot read the cell table {path} ({exc}). Give a CSV written by dinoloc predict.") from exc
    missing = [c for c in ("image", "label") if c not in table.columns]
    if missing:
        raise DinolocError(f"{path} has no column {', '.join(missing)}: give a per-cell CSV written by dinoloc (docs/csv.md).")
    return cell_frame(table)


def class_names(table) -> list[str]:
    """The model's classes, in its order: the ``prob_<class>`` columns."""
    return [c[len(PROB_PREFIX):] for c in table.columns if c.startswith(PROB_PREFIX)]


def _checked_rows(table, embeddings) -> np.ndarray:
    vectors = np.asarray(embeddings)
    if vectors.ndim != 2:
        raise DinolocError(f"The embeddings must be a table of cells × dimensions; these have shape {vectors.shape}.")
    if len(vectors) != len(table):
        raise DinolocError(f"The cell table has {len(table)} rows but there are {len(vectors)} embeddings: "
                           "give the embeddings of the same cells, in the same order.")
    return vectors


# ---- JSON-safe metadata ---------------------------------------------------------------------------
def json_safe(value, *, drop_none: bool = False):
    """Nested dicts of str keys and str/int/float/bool/list values (numpy scalars, paths, tuples converted).
    ``drop_none``: leave out unset values (HDF5 attributes cannot hold None); lists mixing kinds of
    values become their JSON text, which .h5ad can store where it cannot store a mixed list."""
    if isinstance(value, Mapping):
        items = ((str(k), json_safe(v, drop_none=drop_none)) for k, v in value.items())
        return {k: v for k, v in items if not (drop_none and v is None)}
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [json_safe(v, drop_none=drop_none) for v in value]
        kinds = {type(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else float for v in items}
        if drop_none and (len(kinds) > 1 or kinds & {dict, list, type(None)}):
            return json.dumps(items)
        return items
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# ---- writing beside the final name, then renaming -----------------------------------------------
def _temporary_name(path: Path) -> Path:
    # The same pattern as core.files.atomic_write, so its clean-up recognises leftovers of killed writes.
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _output_path(path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DinolocError(f"Cannot create the folder {path.parent}: {exc.strerror}. Choose another output path.") from None
    return path


@contextmanager
def replaced_folder(path) -> Iterator[Path]:
    """Yield a new folder to fill; on success it replaces ``path`` (an earlier output is removed only then)."""
    path = _output_path(path)
    if path.exists() and not path.is_dir():
        raise DinolocError(f"Cannot write {path}: it is a file, and this output is a folder. Give a folder name.")
    tmp = _temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        old = _temporary_name(path) if path.exists() else None
        if old is not None:
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def replaced_file(path) -> Iterator[Path]:
    """Yield a temporary file path to write (by a library that wants a path); renamed into place on success."""
    from ..files import remove_stale_temporaries

    path = _output_path(path)
    if path.is_dir():
        raise DinolocError(f"Cannot write {path}: it is an existing folder. Give a file name.")
    remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- Parquet --------------------------------------------------------------------------------------
def write_parquet(table, path, partition_cols: Sequence[str] = ("plate", "image")) -> Path:
    """The per-cell table as a Parquet dataset (a folder) in hive layout ``plate=P1/image=A01_s1/…``,
    partitioned by those of ``partition_cols`` the table has. The row number is stored as the index, so
    :func:`read_parquet` gives the rows back in their order; pandas, polars, DuckDB and Spark read it as is."""
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    frame = cell_frame(table)
    columns = [c for c in partition_cols if c in frame.columns]
    arrow = pa.Table.from_pandas(frame, preserve_index=True)
    with replaced_folder(path) as folder:
        # The file name is fixed so that a rewrite of one partition replaces its file rather than adding one.
        partitions = len(frame.groupby(columns, dropna=False).size()) if columns else 1  # pyarrow refuses > 1024 unless told
        pq.write_to_dataset(arrow, folder, partition_cols=columns or None, basename_template="cells-{i}.parquet",
                            max_partitions=max(1024, partitions))
    return Path(path)


def read_parquet(path):
    """A dataset written by :func:`write_parquet` as the table it was written from (rows in their order,
    partition columns with their types: a partition folder names its value as text)."""
    pa, ds, pq = require("pyarrow"), require("pyarrow.dataset"), require("pyarrow.parquet")
    path = Path(path)
    if not path.exists():
        raise DinolocError(f"There is no Parquet table at {path}.")
    keys = _partition_keys(path)
    partitioning = ds.partitioning(pa.schema([(k, pa.string()) for k in keys]), flavor="hive") if keys else None
    arrow = pq.read_table(path, partitioning=partitioning)
    frame = arrow.to_pandas().sort_index()
    types = {c["name"]: c["numpy_type"] for c in (arrow.schema.pandas_metadata or {}).get("columns", [])}
    for key in keys:
        if types.get(key) not in (None, "object", "str", "string"):
            frame[key] = frame[key].astype(types[key])
        else:  # an empty value is stored as the "no value" partition
            frame[key] = frame[key].fillna("").astype(str)
    order = [c for c in types if c in frame.columns] + [c for c in frame.columns if c not in types]
    frame = frame[order]
    frame.index.name = None
    return frame


def _partition_keys(path: Path) -> list[str]:
    keys, folder = [], path
    while folder.is_dir():
        named = sorted(p for p in folder.iterdir() if p.is_dir() and "=" in p.name)
        if not named:
            break
        keys.append(named[0].name.split("=", 1)[0])
        folder = named[0]
    return keys


# ---- Zarr -----------------------------------------------------------------------------------------
def write_embeddings_zarr(embeddings: np.ndarray, cell_index, path, attrs: dict,
                          chunk_rows: int = ZARR_CHUNK_ROWS) -> Path:
    """A Zarr group: ``embeddings`` (cells × dimensions, float32, chunked by rows), ``image`` and ``cell_id``
    (the label of each row's cell) and, where ``cell_index`` has them, ``plate``, ``well``, ``site``;
    the group's attributes hold ``attrs`` (model, settings)."""
    zarr = require("zarr")
    index = cell_frame(cell_index)
    vectors = _checked_rows(index, embeddings).astype(np.float32, copy=False)
    ids = index["cell_id"] if "cell_id" in index.columns else index.get("label")
    if "image" not in index.columns or ids is None:
        raise DinolocError("The cell index needs the columns image and label (or cell_id).")
    rows = max(1, min(int(chunk_rows), len(vectors)))
    columns = {"image": index["image"], "cell_id": ids.astype(np.int64)}
    columns.update({c: index[c] for c in PLACE_COLUMNS if c in index.columns})
    with replaced_folder(path) as folder:
        group = zarr.open_group(str(folder), mode="w")
        for name, values in {"embeddings": vectors, **{k: v.to_numpy() for k, v in columns.items()}}.items():
            array = zarr_array(group, name, values, values.shape, (rows, *values.shape[1:]))
            if len(values):
                array[:] = values.astype(object) if values.dtype == object or values.dtype.kind in "US" else values
        group.attrs.update(json_safe({"format": "napari-dinoloc embeddings", "cells": len(vectors),
                                      "dim": int(vectors.shape[1]), **attrs}))
    return Path(path)


def zarr_array(group, name: str, values: np.ndarray, shape: tuple, chunks: tuple):
    """An empty array of ``shape`` for values like ``values`` (text: variable-length UTF-8), to be filled."""
    text = values.dtype == object or values.dtype.kind in "US"
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, shape=shape, dtype=str if text else values.dtype, chunks=chunks)
    return group.create_dataset(name, shape=shape, dtype=str if text else values.dtype, chunks=chunks)  # zarr 2


def _read_column(array) -> np.ndarray:
    values = np.asarray(array[:])
    if values.dtype.kind in "iufb":
        return values
    return values.astype(object).astype(str).astype(object)  # zarr 3 gives numpy's StringDType


def read_embeddings_zarr(path):
    """(embeddings (N, D) float32, cell index DataFrame with image and cell_id, attributes) of a group
    written by :func:`write_embeddings_zarr`."""
    zarr, pd = require("zarr"), require("pandas")
    try:
        group = zarr.open_group(str(path), mode="r")
        vectors = np.asarray(group["embeddings"][:], dtype=np.float32)
        index = pd.DataFrame({"image": _read_column(group["image"]),
                              "cell_id": np.asarray(group["cell_id"][:], dtype=np.int64)})
        for column in PLACE_COLUMNS:
            if column in group:
                index[column] = _read_column(group[column])
        return vectors, index, dict(group.attrs)
    except (KeyError, OSError, ValueError, FileNotFoundError) as exc:
        raise DinolocError(f"{path} is not an embeddings Zarr group written by napari-dinoloc ({exc}).") from exc


# ---- AnnData ----------------------------------------------------------------------------------------
def obs_names(table) -> list[str]:
    """Unique cell names ``image:label`` (``plate/image:label`` when image names repeat across plates)."""
    names = table["image"].astype(str) + ":" + table["label"].astype(str)
    if not names.is_unique and "plate" in table.columns:
        names = table["plate"].astype(str) + "/" + names
    if not names.is_unique:
        repeated = names[names.duplicated()].iloc[0]
        raise DinolocError(f"The cell {repeated} appears more than once in the table: each image name and cell "
                           "label must be unique (per plate). Give each image once.")
    return names.tolist()


def write_anndata(table, embeddings, path, uns: dict, umap: np.ndarray | None = None) -> Path:
    """An AnnData ``.h5ad`` that scanpy opens directly:

    - ``obs``: the per-cell table, one row per cell named ``image:label``, text columns as categories;
    - ``X``: the class probabilities (``var_names`` = the model's classes), or an empty cells × 0 matrix when
      no cell has been predicted (docs/screens.md says why);
    - ``obsm["X_dinoloc"]``: the embeddings; ``obsm["X_umap"]``: the UMAP layout when given;
    - ``uns["dinoloc"]``: ``uns`` (model card, settings) as nested dicts of text, numbers and lists."""
    ad, pd = require("anndata"), require("pandas")
    frame = cell_frame(table)
    vectors = _checked_rows(frame, embeddings).astype(np.float32, copy=False)
    classes = class_names(frame)
    probabilities = frame[[PROB_PREFIX + c for c in classes]].to_numpy(np.float32)
    if not classes or not np.isfinite(probabilities).all():
        classes, probabilities = [], np.zeros((len(frame), 0), np.float32)
    obs = frame.copy()
    obs.index = pd.Index(obs_names(frame), dtype=str)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].astype("category")
    var = pd.DataFrame({"column": [PROB_PREFIX + c for c in classes]}, index=pd.Index(classes, dtype=str))
    obsm = {EMBEDDINGS_KEY: vectors}
    if umap is not None:
        obsm["X_umap"] = _checked_rows(frame, umap).astype(np.float32, copy=False)
    adata = ad.AnnData(X=probabilities, obs=obs, var=var, obsm=obsm,
                       uns={"dinoloc": json_safe(uns, drop_none=True)})
    with replaced_file(path) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)
