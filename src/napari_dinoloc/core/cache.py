"""On-disk cache of embeddings, keyed by the signature the embedder gives (``embedding.signature``).

Each entry is ``<key>.npz`` (labels, vectors; read with allow_pickle=False) plus ``<key>.json`` (the
full signature). The key is a hash of the signature, and ``get`` compares the stored signature with
the asked one field by field, so a hash collision or an edited file recomputes instead of reusing.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from .embedding import Embeddings, canonical, signature_key
from .errors import DinolocError
from .files import atomic_write, write_json_atomic


def default_cache_dir() -> Path:
    env = os.environ.get("DINOLOC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-dinoloc"


class EmbeddingCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def _paths(self, sig: dict) -> tuple[Path, Path]:
        key = signature_key(sig)
        return self.root / f"{key}.npz", self.root / f"{key}.json"

    def get(self, sig: dict, labels=None, width: int | None = None):
        """The cached Embeddings for exactly this signature, or None.

        ``labels`` (the image's cell ids, in order) and ``width`` (the embedding length), when given,
        must match the stored entry. A damaged entry (unreadable, wrong width, NaNs, other cells) is
        never served: it is discarded with a warning and the caller recomputes.
        """
        arrays_path, meta_path = self._paths(sig)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return self._discard(sig, "its description is unreadable")
        if not isinstance(meta, dict) or "signature" not in meta:
            return self._discard(sig, "its description is not a cache record")
        if meta["signature"] != canonical(sig):
            return None  # another request whose key collides: not damage
        try:
            with np.load(arrays_path, allow_pickle=False) as stored:
                stored_labels, vectors = stored["labels"], stored["vectors"]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            return self._discard(sig, f"its arrays are unreadable ({type(exc).__name__})")
        problem = _problem(meta, stored_labels, vectors, labels, width)
        if problem:
            return self._discard(sig, problem)
        return Embeddings(labels=stored_labels, vectors=vectors, signature=meta.get("embeddings_signature", meta["signature"]))

    def _discard(self, sig: dict, why: str) -> None:
        """Remove a damaged entry (so it is rewritten) and warn; None: the caller recomputes."""
        for path in self._paths(sig):
            try:
                path.unlink()
            except OSError:
                pass
        warnings.warn(f"A damaged embedding cache entry in {self.root} was discarded ({why}); "
                      "the embeddings are computed again.", RuntimeWarning, stacklevel=3)
        return None

    def put(self, sig: dict, embeddings) -> None:
        arrays_path, meta_path = self._paths(sig)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DinolocError(f"Cannot create the embedding cache folder {self.root} ({exc.strerror}). "
                               "Set DINOLOC_CACHE_DIR to a folder you can write to.") from exc
        with atomic_write(arrays_path, "wb") as handle:
            np.savez(handle, labels=np.asarray(embeddings.labels), vectors=np.asarray(embeddings.vectors, np.float32))
        # written last: an entry without its json is never read
        write_json_atomic(meta_path, {"signature": canonical(sig), "embeddings_signature": embeddings.signature})


def _problem(meta: dict, stored_labels, vectors, labels, width) -> str | None:
    """What is wrong with a stored entry, or None."""
    if vectors.ndim != 2 or stored_labels.ndim != 1 or len(stored_labels) != len(vectors):
        return f"{len(stored_labels)} labels for vectors of shape {vectors.shape}"
    if not np.issubdtype(vectors.dtype, np.floating) or not np.issubdtype(stored_labels.dtype, np.integer):
        return "its arrays have the wrong types"
    declared = meta.get("embeddings_signature", {}).get("dim") if isinstance(meta.get("embeddings_signature"), dict) else None
    for expected in (declared, width):
        if expected is not None and vectors.shape[1] != expected:
            return f"vectors {vectors.shape[1]} wide, expected {expected}"
    if not np.all(np.isfinite(vectors)):
        return "its vectors hold NaN or infinite values"
    if labels is not None and not np.array_equal(np.asarray(labels), stored_labels):
        return "its cells are not this image's cells"
    return None
