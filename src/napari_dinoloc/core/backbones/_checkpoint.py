"""Reading backbone checkpoints safely: safetensors, or torch files with ``weights_only`` (no pickled code runs).

DINO training checkpoints yield their teacher; DDP/MultiCropWrapper/torch.compile prefixes are stripped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DinolocError
from ..files import hash_file
from ._dinov2 import dinov2_to_timm
from ..tensor_files import PICKLE, SAFETENSORS, TORCH_ZIP, file_kind, read_safetensors_header

_DROP_PREFIXES = ("module.", "backbone.", "_orig_mod.")  # DDP, DINO's MultiCropWrapper, torch.compile
_NESTED_KEYS = ("teacher", "state_dict", "model", "student")  # DINO evaluates the teacher; a student alone is used
_DROP_KEYS = ("mask_token",)  # DINOv2 training-only token


def read_checkpoint(path: str | Path) -> dict:
    """The backbone state dict stored in ``path`` (safetensors or a torch file), read without running code.

    DINO training checkpoints yield their teacher; ``module.``/``backbone.`` prefixes are stripped and
    the DINO projection heads (``head.*``, ``dino_head.*``, ``ibot_head.*``) are dropped; DINOv2-layout
    files (register tokens, chunked blocks) are given timm's names.
    """
    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"The weights file {path} does not exist. Check the path given with --weights.")
    kind = file_kind(path)
    if kind == SAFETENSORS or (kind is None and path.suffix == ".safetensors"):
        read_safetensors_header(path)  # every declared size checked against the file before reading
        raw = _read_safetensors(path)
    elif kind in (TORCH_ZIP, PICKLE):
        raw = _read_torch_file(path)
    else:
        raise _damaged(path, ValueError("neither a safetensors header nor a PyTorch zip or pickle"))
    return _backbone_state(raw, path)


def is_safetensors(path: Path) -> bool:
    """True for a file with the safetensors structure (header length, then a JSON object)."""
    return file_kind(path) == SAFETENSORS


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise _damaged(path, exc) from exc


def _read_torch_file(path: Path) -> dict:
    import argparse
    import pickle

    import torch

    try:
        # argparse.Namespace: the 'args' entry of DINO training checkpoints; it only holds plain values
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False, which would run the file's code: never pass that on
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise DinolocError(
            f"Refusing to load {path.name}: it holds code-bearing objects, a pickled Python object{what} that could "
            "run code when loaded, so it will not be loaded. Use a checkpoint that holds only tensors (a state dict "
            ".pth or .safetensors); if you trust its source, convert it to safetensors yourself."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise _damaged(path, exc) from exc


def _damaged(path: Path, exc: BaseException) -> DinolocError:
    reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return DinolocError(
        f"Cannot read the weights file {path.name}: it is damaged or not a PyTorch/safetensors checkpoint "
        f"({reason}). Download it again or choose another file."
    )


def _backbone_state(raw, path: Path) -> dict:
    import torch

    while isinstance(raw, dict):
        nested = next((raw[k] for k in _NESTED_KEYS if isinstance(raw.get(k), dict)), None)
        if nested is None:
            break
        raw = nested
    if not isinstance(raw, dict):
        raise DinolocError(f"{path.name} holds a {type(raw).__name__}, not model weights. Give a checkpoint or state dict file.")
    state = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = _strip_prefixes(str(key))
        if key.startswith("head.") or key in _DROP_KEYS:  # DINO projection head: not part of the backbone
            continue
        state[key] = value
    state = dinov2_to_timm(state)  # DINOv2 / Cell-DINO hub layout -> timm names
    if not state:
        raise DinolocError(f"{path.name} holds no model weights (no tensors found). Give a checkpoint or state dict file.")
    return state


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _DROP_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def weights_file_hash(path: str | Path) -> str:
    """sha256 of the file, computed once per (path, size, mtime) in this process."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = hash_file(path)
    return _HASH_CACHE[key]
