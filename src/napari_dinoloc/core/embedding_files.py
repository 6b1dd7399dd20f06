"""Embeddings as files: one .npz (no pickle) with image names, cell labels, vectors, signatures."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DinolocError
from .files import atomic_write


def save_embeddings(path: str | Path, parts: Sequence[tuple[str, object]]) -> Path:
    """``parts``: (image name, Embeddings) pairs, all of the same dimension."""
    dims = {e.vectors.shape[1] for _, e in parts}
    if len(dims) > 1:
        raise DinolocError(f"Embeddings of different sizes {sorted(dims)} cannot share one file: use one backbone and strategy.")
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        image=np.array([name for name, e in parts for _ in e.labels], dtype=str),
        label=np.concatenate([e.labels for _, e in parts]).astype(np.int64),
        vectors=np.concatenate([e.vectors for _, e in parts]).astype(np.float32),
        signatures=np.array(json.dumps([e.signature for _, e in parts], default=str)),
    )
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def load_embeddings(path: str | Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {
                "image": data["image"],
                "label": data["label"],
                "vectors": data["vectors"],
                "signatures": json.loads(str(data["signatures"])),
            }
    except (OSError, ValueError, KeyError) as exc:
        raise DinolocError(f"{path} is not an embeddings file written by napari-dinoloc ({exc}).") from exc
