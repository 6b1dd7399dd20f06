"""A screen run's folder: the manifest (inputs, settings, model hash, shard status) and one shard per image.

A shard ``<key>.npz`` is written by the task that made it, atomically, and then its checksum
``<key>.npz.sha256``; a shard is complete when both exist and agree. Re-running the same command
finds the complete shards and computes only the others; a damaged shard is removed and computed again.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DinolocError
from ..files import atomic_write, hash_file, write_json_atomic
from ._tiles import shard_keys

FORMAT_NAME = "napari-dinoloc screen run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DONE, SKIPPED = "done", "skipped"
SAVE_EVERY_S = 2.0  # the manifest is rewritten at most this often while shards come in (and at the end)


def run_folder_for(out) -> Path:
    """``predictions.csv`` -> ``predictions.csv.shards/``."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


class ScreenRun:
    """The manifest of one run, kept in memory and written atomically."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest
        self._saved = 0.0

    # ---- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder, command: str, settings: dict, model_hash: str, inputs: Sequence[dict]) -> "ScreenRun":
        """The run in ``folder``: a new one, or the earlier run of the same command, settings, model and inputs
        (any difference is refused with a message naming it)."""
        folder = Path(folder)
        wanted = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "command": command, "settings": settings,
                  "model_hash": model_hash, "inputs": list(inputs), "shards": {}}
        wanted = json.loads(json.dumps(wanted, default=str))  # as it reads back
        path = folder / MANIFEST
        if path.is_file():
            earlier = _read_manifest(path)
            difference = _difference(earlier, wanted)
            if difference:
                raise DinolocError(f"The run folder {folder} holds a run with {difference}. Give another --out, or "
                                   f"delete {folder} to start again.")
            wanted["shards"] = earlier.get("shards", {})
        elif folder.exists() and any(folder.iterdir()):
            raise DinolocError(f"{folder} exists and is not a dinoloc run folder: give another --out, or remove it.")
        folder.mkdir(parents=True, exist_ok=True)
        run = cls(folder, wanted)
        run.save()
        return run

    # ---- shards ---------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """The shard keys, in input order: an image's own, or one per tile of a tiled image."""
        return [key for item in self.manifest["inputs"] for key in shard_keys(item)]

    def shards(self) -> list[tuple[str, dict]]:
        """(shard key, the input it belongs to) of every shard, in input order."""
        return [(key, item) for item in self.manifest["inputs"] for key in shard_keys(item)]

    def shard_path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def status(self, key: str) -> dict:
        return self.manifest["shards"].get(key, {})

    def is_complete(self, key: str) -> bool:
        """The shard exists and its checksum agrees (else any leftover of it is removed)."""
        shard = self.shard_path(key)
        expected = read_checksum(shard)
        if expected is not None and shard.is_file() and hash_file(shard) == expected:
            return True
        for path in (shard, checksum_path(shard)):
            path.unlink(missing_ok=True)
        self.manifest["shards"].pop(key, None)
        return False

    def to_compute(self) -> list[str]:
        """Keys whose shard is missing or damaged, in input order (skipped images are tried again)."""
        return [key for key in self.keys if not self.is_complete(key)]

    def missing(self) -> list[str]:
        return [key for key in self.keys if self.status(key).get("status") != SKIPPED and not self.is_complete(key)]

    def record(self, key: str, status: dict) -> None:
        self.manifest["shards"][key] = status
        if time.monotonic() - self._saved > SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        self._saved = time.monotonic()


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DinolocError(f"The run manifest {path} cannot be read ({exc}): delete its folder to start again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DinolocError(f"{path} is not a dinoloc run manifest: give another --out.")
    return manifest


def _difference(earlier: dict, wanted: dict) -> str:
    """'' when the runs are the same; else the first difference, in words."""
    if earlier.get("command") != wanted["command"]:
        return f"another command ({earlier.get('command')!r}, not {wanted['command']!r})"
    if earlier.get("model_hash") != wanted["model_hash"]:
        return "another model (its file or backbone weights differ)"
    changed = _changed(earlier.get("settings", {}), wanted["settings"])
    if changed:
        name, old, new = changed
        return f"another setting: {name} was {old!r}, now {new!r}"
    old_keys = [i.get("key") for i in earlier.get("inputs", [])]
    new_keys = [i["key"] for i in wanted["inputs"]]
    if old_keys != new_keys:
        added, removed = len(set(new_keys) - set(old_keys)), len(set(old_keys) - set(new_keys))
        return f"other images ({added} added, {removed} removed{', or reordered' if not added + removed else ''})"
    return ""


def _changed(old: dict, new: dict, prefix: str = ""):
    """(dotted name, old, new) of the first setting that differs, or None."""
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _changed(a, b, f"{prefix}{name}.")
            if inner:
                return inner
        elif a != b:
            return f"{prefix}{name}", a, b
    return None


# ---- shard files (written by the task, on the worker) ---------------------------------------------
def checksum_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".sha256")


def read_checksum(shard: Path) -> Optional[str]:
    try:
        return checksum_path(shard).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def write_shard(shard: Path, image: str, rows: list, embeddings) -> str:
    """One image's per-cell rows and embeddings as one .npz (no pickle), then its checksum; returns it.
    Uncompressed and not fsynced: deflating float embeddings gains little and cost ~25 ms a shard, an fsync
    as much again; a shard torn by a crash fails its checksum and is computed anew on resume."""
    buffer = io.BytesIO()
    np.savez(
        buffer, image=np.array(image), rows=np.array(json.dumps(rows)),
        label=np.asarray(embeddings.labels, dtype=np.int64), vectors=np.asarray(embeddings.vectors, dtype=np.float32),
        signature=np.array(json.dumps(embeddings.signature, default=str)),
    )
    data = buffer.getvalue()
    with atomic_write(shard, "wb", sync=False) as handle:
        handle.write(data)
    checksum = hashlib.sha256(data).hexdigest()
    with atomic_write(checksum_path(shard), "w", encoding="ascii", sync=False) as handle:
        handle.write(checksum + "\n")
    return checksum


def read_shard(shard: Path, parts: Sequence[str] = ("image", "rows", "label", "vectors", "signature")) -> dict:
    try:
        with np.load(shard, allow_pickle=False) as data:
            out = {name: data[name] for name in parts}
    except (OSError, ValueError, KeyError) as exc:
        raise DinolocError(f"The shard {shard} cannot be read ({exc}): run the same command again to compute it anew.") from None
    for name in ("image",):
        if name in out:
            out[name] = str(out[name])
    for name in ("rows", "signature"):
        if name in out:
            out[name] = json.loads(str(out[name]))
    return out
