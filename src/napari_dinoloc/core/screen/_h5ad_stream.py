"""The merged run as an AnnData ``.h5ad``, written image by image with h5py: the same file
``outputs.write_anndata`` makes of the whole table, without holding the run's table or embeddings.

A first pass over the shards' rows (no embeddings) finds what must be known before the first row is
written: the categories of each text column (anndata stores text as categories, sorted), each number
column's type, whether every cell has probabilities (``X``), and the cells' names. The second pass fills
the datasets, sized for the whole run, one image's rows at a time. No whole-run UMAP (``obsm["X_umap"]``):
it needs every embedding at once; scanpy computes one from ``X_dinoloc`` (docs/screens.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DinolocError
from .outputs import EMBEDDINGS_KEY, PROB_PREFIX, class_names, json_safe, replaced_file, require

ARRAY = {"encoding-type": "array", "encoding-version": "0.2.0"}
STRINGS = {"encoding-type": "string-array", "encoding-version": "0.2.0"}


class _ObsPlan:
    """What the first pass learns about the run's cells."""

    def __init__(self, cells):
        self.columns, self.text, self.types, self.finite, images = None, {}, {}, True, []
        last_input = None
        for (_, frame, _), source in zip(cells.frames(), cells.inputs):
            if self.columns is None:
                self.columns = list(frame.columns)
                self.classes = class_names(frame)
            for column in self.columns:
                values = frame[column]
                if values.dtype == object:
                    self.text.setdefault(column, set()).update(values.unique().tolist())
                else:
                    self.types[column] = np.result_type(self.types.get(column, values.dtype), values.dtype)
            probabilities = frame[[PROB_PREFIX + c for c in self.classes]].to_numpy(np.float64)
            self.finite = self.finite and bool(np.isfinite(probabilities).all())
            if source != last_input:  # the tiles of one image are one image
                images.append((str(frame["plate"].iloc[0]) if "plate" in frame.columns else None, frame["image"].iloc[0],
                               int(frame["label"].iloc[0])))
            last_input = source
        self.text = {c: sorted(v) for c, v in self.text.items()}
        self.by_plate = _name_prefix(images)
        if not self.classes or not self.finite:
            self.classes = []

    def names(self, frame) -> np.ndarray:
        """``image:label`` (``plate/image:label`` when image names repeat across plates), as write_anndata names cells."""
        names = frame["image"].astype(str) + ":" + frame["label"].astype(str)
        if self.by_plate:
            names = frame["plate"].astype(str) + "/" + names
        return names.to_numpy(object)


def _name_prefix(images: list) -> bool:
    """Whether cells need their plate in their name; refuses a repeated (plate,) image (its cells repeat)."""
    names = [image for _, image, _ in images]
    if len(set(names)) == len(names):
        return False
    by_plate = images[0][0] is not None
    seen = set()
    for plate, image, label in images:
        key = (plate, image) if by_plate else image
        if key in seen:
            repeated = f"{plate}/{image}:{label}" if by_plate else f"{image}:{label}"
            raise DinolocError(f"The cell {repeated} appears more than once in the table: each image name and cell "
                               "label must be unique (per plate). Give each image once.")
        seen.add(key)
    return by_plate


def _write_elem():
    ad = require("anndata")
    io = getattr(ad, "io", None)
    return getattr(io, "write_elem", None) or ad.experimental.write_elem


def _dataset(group, name: str, shape: tuple, dtype, attrs: dict):
    dataset = group.create_dataset(name, shape=shape, dtype=dtype)
    dataset.attrs.update(attrs)
    return dataset


def stream_anndata(cells, path, uns: dict) -> Path:
    """As ``outputs.write_anndata(table, embeddings, path, uns)`` of the whole run (no UMAP), streamed."""
    h5py, pd = require("h5py"), require("pandas")
    write_elem = _write_elem()
    plan = _ObsPlan(cells)
    n = cells.cells
    with replaced_file(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        obs = f.create_group("obs")
        obs.attrs.update({"_index": "_index", "column-order": np.array(plan.columns, dtype=object),
                          "encoding-type": "dataframe", "encoding-version": "0.2.0"})
        index = _dataset(obs, "_index", (n,), h5py.string_dtype(), STRINGS)
        columns = {}
        for column in plan.columns:
            if column in plan.text:
                group = obs.create_group(column)
                group.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
                _dataset(group, "categories", (len(plan.text[column]),), h5py.string_dtype(), STRINGS)[:] = \
                    np.array(plan.text[column], dtype=object)
                codes = pd.Categorical([], categories=plan.text[column]).codes.dtype
                columns[column] = _dataset(group, "codes", (n,), codes, ARRAY)
            else:
                columns[column] = _dataset(obs, column, (n,), plan.types[column], ARRAY)
        x = _dataset(f, "X", (n, len(plan.classes)), np.float32, ARRAY)
        write_elem(f, "obsm", {})
        embeddings = _dataset(f["obsm"], EMBEDDINGS_KEY, (n, cells.width), np.float32, ARRAY)
        for offset, frame, vectors in cells.frames(vectors=True):
            rows = slice(offset, offset + len(frame))
            index[rows] = plan.names(frame)
            for column, dataset in columns.items():
                values = frame[column]
                dataset[rows] = (pd.Categorical(values, categories=plan.text[column]).codes if column in plan.text
                                 else values.to_numpy(plan.types[column]))
            if plan.classes:
                x[rows] = frame[[PROB_PREFIX + c for c in plan.classes]].to_numpy(np.float32)
            embeddings[rows] = np.asarray(vectors, dtype=np.float32)
        var = pd.DataFrame({"column": [PROB_PREFIX + c for c in plan.classes]}, index=pd.Index(plan.classes, dtype=str))
        write_elem(f, "var", var)
        write_elem(f, "uns", {"dinoloc": json_safe(uns, drop_none=True)})
        for name in ("layers", "obsp", "varm", "varp"):
            write_elem(f, name, {})
    return Path(path)
