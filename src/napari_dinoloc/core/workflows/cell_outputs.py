"""A run's cells in the formats of other tools, and per-well profiles (docs/screens.md).

``dinoloc predict`` / ``embed`` with ``--parquet`` / ``--zarr`` / ``--h5ad``, ``dinoloc aggregate`` and the
widget's AnnData export call these; the formats themselves are ``core.screen``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DinolocError

#: The package each output needs (the ``screen`` extra).
PACKAGES = {"parquet": "pyarrow", "zarr": "zarr", "h5ad": "anndata"}


@dataclass
class ExtraOutputs:
    """The outputs for other tools asked for beside the CSV or .npz (None: not asked)."""
    parquet: Optional[Path] = None
    zarr: Optional[Path] = None
    h5ad: Optional[Path] = None

    @property
    def asked(self) -> dict[str, Path]:
        return {name: Path(path) for name, path in vars(self).items() if path is not None}

    @property
    def need_embeddings(self) -> bool:
        return self.zarr is not None or self.h5ad is not None

    def check(self) -> "ExtraOutputs":
        """The packages are there (asked before hours of work, not after)."""
        from ..screen.outputs import require

        if self.asked:
            require("pandas")
        for name in self.asked:
            require(PACKAGES[name])
        return self


def aligned_embeddings(table, parts: Sequence) -> np.ndarray:
    """The vectors of ``parts`` ((image name, Embeddings) pairs) in the row order of ``table``."""
    keys = [f"{name}:{int(label)}" for name, e in parts for label in e.labels]
    vectors = np.concatenate([e.vectors for _, e in parts]) if parts else np.zeros((0, 0), np.float32)
    return _in_table_order(table, keys, vectors, "the embeddings")


def _in_table_order(table, keys, vectors: np.ndarray, what: str) -> np.ndarray:
    row_of = {key: i for i, key in enumerate(keys)}
    if len(row_of) != len(keys):
        raise DinolocError(f"An image name appears twice in {what}: give each image once (or name images uniquely).")
    wanted = (table["image"].astype(str) + ":" + table["label"].astype(int).astype(str)).tolist()
    missing = [key for key in wanted if key not in row_of]
    if missing:
        raise DinolocError(f"{len(missing)} cell(s) of the table are not in {what} (e.g. {missing[0]}): give the "
                           "embeddings of the same run.")
    return np.asarray(vectors)[[row_of[key] for key in wanted]]


# ---- what the files say about the model and the settings ------------------------------------------
def common_settings(signatures: Sequence[dict]) -> dict:
    """The embedding settings every image shares (per-image hashes drop out when there are several)."""
    signatures = [s for s in signatures if s]
    if not signatures:
        return {}
    first = signatures[0]
    return {k: v for k, v in first.items() if all(s.get(k) == v for s in signatures[1:])}


def model_card(model=None, backbone=None, head=None) -> dict:
    """The model: a bundle's description, else the head trained now and the backbone."""
    bundle = getattr(model, "bundle", None)
    if bundle is not None:
        return {"card": bundle.card(), "head": bundle.head.kind, "class_names": list(bundle.class_names),
                "backbone": bundle.backbone_name, "weights_hash": bundle.weights_hash, "stains": list(bundle.stains),
                "class_counts": dict(bundle.class_counts), "metrics": bundle.metrics or {},
                "fine_tuned": bool(bundle.backbone_state)}
    head = head if head is not None else getattr(model, "head", None)
    backbone = backbone if backbone is not None else getattr(model, "backbone", None)
    card = {"backbone": getattr(backbone, "name", ""), "weights_hash": getattr(backbone, "weights_hash", "")}
    if head is not None:
        card.update(head=head.kind, class_names=list(head.class_names))
    return card


def run_description(card: dict, signatures: Sequence[dict]) -> dict:
    from ... import __version__

    return {"package": "napari-dinoloc", "version": __version__, "model": card, "settings": common_settings(signatures)}


def write_extra_outputs(table, vectors, outputs: ExtraOutputs, description: dict,
                        umap: Optional[np.ndarray] = None) -> list[Path]:
    """Write the asked outputs of one per-cell table and its embeddings (same rows); the paths written."""
    from ..screen.outputs import write_anndata, write_embeddings_zarr, write_parquet

    written = []
    if outputs.parquet is not None:
        written.append(write_parquet(table, outputs.parquet))
    if outputs.zarr is not None:
        written.append(write_embeddings_zarr(vectors, table, outputs.zarr, description))
    if outputs.h5ad is not None:
        written.append(write_anndata(table, vectors, outputs.h5ad, description, umap=umap))
    return written


def write_run_outputs(csv_path, parts: Sequence, outputs: ExtraOutputs, description: dict) -> list[Path]:
    """After ``dinoloc predict``: the CSV just written, read back, with the images' embeddings."""
    from ..screen.outputs import read_cells_csv

    table = read_cells_csv(csv_path)
    vectors = aligned_embeddings(table, parts) if outputs.need_embeddings else None
    return write_extra_outputs(table, vectors, outputs, description)


def write_embedded_outputs(rows: Sequence[dict], parts: Sequence, outputs: ExtraOutputs, description: dict) -> list[Path]:
    """After ``dinoloc embed``: the cells' table (no predictions) with their embeddings."""
    from ..screen.outputs import cell_frame, require

    table = cell_frame(require("pandas").DataFrame(list(rows)))
    vectors = aligned_embeddings(table, parts) if outputs.need_embeddings else None
    return write_extra_outputs(table, vectors, outputs, description)


def export_anndata(session, path, user_labels=None, umap: Optional[np.ndarray] = None) -> Path:
    """The session's image as an AnnData file: its cells (predictions when there are any, the user's
    labels), their embeddings and the model (the widget's export)."""
    from ..screen.outputs import cell_frame, require, write_anndata

    session.require_embeddings()
    table = cell_frame(require("pandas").DataFrame(session.rows(user_labels or {})))
    vectors = aligned_embeddings(table, [(session.image.name, session.embeddings)])
    card = model_card(backbone=session.backbone, head=session.head if session.predictions is not None else None)
    card.update({k: v for k, v in session.model_info().items() if v})
    return write_anndata(table, vectors, path, run_description(card, [session.embeddings.signature]), umap=umap)


# ---- profiles ---------------------------------------------------------------------------------------
def load_cells(source, embeddings=None):
    """(per-cell table, embeddings in its row order) from an .h5ad, a Parquet table or CSV with
    ``embeddings`` (.npz or .zarr, cells matched by image and label), or a run folder holding those."""
    from ..screen.outputs import EMBEDDINGS_KEY, cell_frame, read_cells_csv, read_parquet, require

    source = Path(source)
    if not source.exists():
        raise DinolocError(f"There is no {source}: give an .h5ad, a Parquet table, a CSV or a run folder.")
    if source.is_dir() and not _is_parquet(source):
        source, embeddings = _run_files(source, embeddings)
    if source.suffix == ".h5ad":
        adata = require("anndata").read_h5ad(source)
        if EMBEDDINGS_KEY not in adata.obsm:
            raise DinolocError(f"{source} has no embeddings (obsm['{EMBEDDINGS_KEY}']): write it with dinoloc --h5ad.")
        return cell_frame(adata.obs), np.asarray(adata.obsm[EMBEDDINGS_KEY])
    table = read_parquet(source) if _is_parquet(source) else read_cells_csv(source)
    if embeddings is None:
        raise DinolocError(f"{source} holds the cells but not their embeddings: give --embeddings (.npz or .zarr).")
    return table, _embeddings_for(table, Path(embeddings))


def _is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet")))


def _run_files(folder: Path, embeddings):
    """A run folder's AnnData file, or its Parquet table and Zarr (or .npz) embeddings."""
    found = {suffix: sorted(folder.glob(f"*{suffix}")) for suffix in (".h5ad", ".parquet", ".csv", ".zarr", ".npz")}
    if len(found[".h5ad"]) == 1:
        return found[".h5ad"][0], None
    table = (found[".parquet"] or found[".csv"] or [None])[0]
    vectors = embeddings or (found[".zarr"] or found[".npz"] or [None])[0]
    if table is None or vectors is None or len(found[".h5ad"]) > 1:
        raise DinolocError(f"{folder} holds no single .h5ad, nor a cell table (.parquet, .csv) with embeddings "
                           "(.zarr, .npz): give the file to summarise.")
    return table, vectors


def _embeddings_for(table, path: Path) -> np.ndarray:
    from ..embedding_files import load_embeddings
    from ..screen.outputs import read_embeddings_zarr

    if path.suffix == ".npz":
        data = load_embeddings(path)
        keys, vectors = [f"{i}:{int(c)}" for i, c in zip(data["image"], data["label"])], data["vectors"]
    else:
        vectors, index, _ = read_embeddings_zarr(path)
        keys = (index["image"].astype(str) + ":" + index["cell_id"].astype(str)).tolist()
    return _in_table_order(table, keys, vectors, str(path))


def controls_from(table, spec: Optional[str]):
    """``COLUMN=VALUE[,VALUE…]`` as True for the cells whose COLUMN is one of the values (None: no controls)."""
    if not spec:
        return None
    column, sep, values = spec.partition("=")
    column, wanted = column.strip(), {v.strip() for v in values.split(",") if v.strip()}
    if not sep or not column or not wanted:
        raise DinolocError(f"Name the controls as COLUMN=VALUE (e.g. compound=DMSO), not {spec!r}.")
    if column not in table.columns:
        raise DinolocError(f"The cell table has no column {column!r} to find the controls in; it has "
                           f"{', '.join(map(str, table.columns))}.")
    return table[column].astype(str).isin(wanted)


def write_profiles(profiles, out) -> Path:
    """The profiles as CSV (or Parquet for a .parquet name), written whole or not at all."""
    from ..files import atomic_write
    from ..screen.outputs import replaced_file, require
    from .cells import make_folder

    out = Path(out)
    make_folder(out.parent if str(out.parent) else Path("."))
    if out.suffix == ".parquet":
        with replaced_file(out) as tmp:
            profiles.to_parquet(tmp, index=False)
        return out
    require("pandas")
    with atomic_write(out, "w", newline="", encoding="utf-8") as handle:
        profiles.to_csv(handle, index=False)
    return out
