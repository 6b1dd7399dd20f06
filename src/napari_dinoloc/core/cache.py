"""On-disk cache of embeddings, keyed by everything that changes them.

Each entry is ``<key>.npz`` (labels, vectors; read with allow_pickle=False) plus ``<key>.json`` (the
full signature). The key is a hash of the signature, and ``get`` compares the stored signature with
the asked one field by field, so a hash collision or an edited file recomputes instead of reusing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import DinolocError
from .files import atomic_write, write_json_atomic

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = os.environ.get("DINOLOC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-dinoloc"


def signature(*, kind: str, image_hash: str, labels_hash: str | None, stains, backbone: str, weights_hash: str,
              strategy: str, embedding: str, crop_size: int | None, input_size: int, mask_background: bool,
              tile_size: int | None = None, device: str = "cpu", precision: str = "auto") -> dict:
    """Everything that determines the embeddings of one image (batch size does not)."""
    from .. import __version__

    return {
        "format": CACHE_FORMAT, "version": __version__, "kind": kind,
        "image_hash": image_hash, "labels_hash": labels_hash, "stains": list(stains),
        "backbone": backbone, "weights_hash": weights_hash, "strategy": strategy, "embedding": embedding,
        "crop_size": crop_size, "input_size": input_size, "mask_background": bool(mask_background),
        "tile_size": tile_size, "device": device, "precision": precision,
    }


def _canonical(sig: dict) -> dict:
    return json.loads(json.dumps(sig, sort_keys=True))  # tuples -> lists, as stored


def signature_key(sig: dict) -> str:
    return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:40]


class EmbeddingCache:
    signature = staticmethod(signature)

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def _paths(self, sig: dict) -> tuple[Path, Path]:
        key = signature_key(sig)
        return self.root / f"{key}.npz", self.root / f"{key}.json"

    def get(self, sig: dict):
        """The cached Embeddings for exactly this signature, or None (also for an unreadable entry)."""
        from .embedding import Embeddings

        arrays_path, meta_path = self._paths(sig)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("signature") != _canonical(sig):
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
        write_json_atomic(meta_path, {"signature": _canonical(sig), "embeddings_signature": embeddings.signature})

    def clear(self) -> int:
        """Delete every cache entry; returns how many were removed."""
        removed = 0
        for path in self.root.glob("*.json"):
            for entry in (path, path.with_suffix(".npz")):
                if entry.exists():
                    entry.unlink()
            removed += 1
        return removed
