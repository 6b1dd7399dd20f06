"""On-disk cache of embeddings, keyed by the signature the embedder gives (``embedding.signature``).

Each entry is ``<key>.npz`` (labels, vectors; read with allow_pickle=False) plus ``<key>.json`` (the
full signature). The key is a hash of the signature, and ``get`` compares the stored signature with
the asked one field by field, so a hash collision or an edited file recomputes instead of reusing.
"""

from __future__ import annotations

import json
import os
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

    def get(self, sig: dict):
        """The cached Embeddings for exactly this signature, or None (also for an unreadable entry)."""
        arrays_path, meta_path = self._paths(sig)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("signature") != canonical(sig):
                return None
            with np.load(arrays_path, allow_pickle=False) as stored:
                labels, vectors = stored["labels"], stored["vectors"]
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None
        if len(labels) != len(vectors):
            return None
        return Embeddings(labels=labels, vectors=vectors, signature=meta.get("embeddings_signature", meta["signature"]))

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
