"""Checks a model bundle passes before it is used: sane declared sizes and intact content (checksums).

The checksums (sha256) cover the tensors and the description, so a flipped byte anywhere in the
file is reported instead of silently changing predictions. Bundles written before checksums existed
have none and still load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import DinolocError
from .tensor_files import TensorInfo, check_limit

CHECKSUMS_KEY = "checksums"
MAX_HEAD_INPUTS = 100_000
MAX_CLASSES = 10_000
MAX_HIDDEN = 100_000
MAX_INPUT_SIZE = 1024  # px the backbone sees
MAX_CROP_SIZE = 16384  # px cut around a cell (the largest field of view read)


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over the tensors' names, types, shapes and little-endian bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(memoryview(array.reshape(-1).view(np.uint8)))
    return digest.hexdigest()


def description_sha256(info: Mapping) -> str:
    """sha256 of the description as JSON stores it (without its own checksums)."""
    stored = json.loads(json.dumps({k: v for k, v in info.items() if k != CHECKSUMS_KEY}))
    return hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()


def with_checksums(info: dict, tensors: Mapping[str, np.ndarray]) -> dict:
    return {**info, CHECKSUMS_KEY: {"tensors_sha256": tensors_sha256(tensors), "description_sha256": description_sha256(info)}}


def verify_checksums(info: Mapping, tensors: Mapping[str, np.ndarray], path: Path) -> None:
    """DinolocError when the stored checksums disagree with the content; nothing to check in old bundles."""
    stored = info.get(CHECKSUMS_KEY)
    if stored is None:
        return
    if not isinstance(stored, dict):
        raise _damaged(path, "its checksums are unreadable")
    if stored.get("tensors_sha256") != tensors_sha256(tensors):
        raise _damaged(path, "the stored weights do not match their checksum")
    if stored.get("description_sha256") != description_sha256(info):
        raise _damaged(path, "its description does not match its checksum")


def _damaged(path: Path, what: str) -> DinolocError:
    return DinolocError(f"The model file {path.name} is damaged ({what}): copy it again from where it was saved, "
                        "or save the model again.")


def check_head_sizes(info: Mapping, shapes: Mapping[str, TensorInfo], path: Path) -> None:
    """The head's declared inputs, classes and layer sizes, and the crop and input sizes, within limits, before loading."""
    head = info.get("head")
    if not isinstance(head, dict):
        raise DinolocError(f"The description inside {path.name} has no classifier settings; the file is damaged. Save the model again.")
    check_limit("a classifier input size of", head.get("input_dim"), MAX_HEAD_INPUTS, path)
    names = head.get("class_names")
    if not isinstance(names, list):
        raise DinolocError(f"The description inside {path.name} has no class list; the file is damaged. Save the model again.")
    check_limit("a number of classes of", len(names), MAX_CLASSES, path)
    params = head.get("params") if isinstance(head.get("params"), dict) else {}
    hidden = params.get("hidden", [])
    for size in hidden if isinstance(hidden, list) else [hidden]:
        check_limit("a hidden layer size of", size, MAX_HIDDEN, path)
    for key, limit in (("input_size", MAX_INPUT_SIZE), ("crop_size", MAX_CROP_SIZE)):
        if info.get(key) is not None:
            check_limit(f"a {key.replace('_', ' ')} of", info[key], limit, path)
    if not any(name.startswith("head.") for name in shapes):
        raise DinolocError(f"{path.name} holds no classifier weights; the file is damaged. Save the model again.")
    _check_familiarity(head, shapes, path)


def _check_familiarity(head: Mapping, shapes: Mapping[str, TensorInfo], path: Path) -> None:
    """The reference cells that flag unfamiliar cells: at most MAX_REFERENCE rows of the head's inputs
    (bundles saved before they existed have none)."""
    from .heads import MAX_REFERENCE

    info = shapes.get("head.familiar_reference")
    if info is None:
        return
    shape = tuple(info.shape)
    if len(shape) != 2 or shape[1] != head.get("input_dim"):
        raise DinolocError(f"{path.name} declares familiarity reference cells of shape {shape}, which do not fit its "
                           f"{head.get('input_dim')} classifier inputs: the file is damaged or crafted. Choose another file.")
    check_limit("a number of familiarity reference cells of", shape[0], MAX_REFERENCE, path)
