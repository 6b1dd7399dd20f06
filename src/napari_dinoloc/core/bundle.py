"""Model bundles: one safetensors file (``.dinoloc``) that makes a prediction reproducible.

Layout: tensors ``head.<name>`` (the trained head) and optionally ``backbone.<name>`` (fine-tuned
backbone weights); the safetensors metadata holds one JSON string under ``"dinoloc"`` with the
class order, head config, backbone name and weights hash, stains and channel strategy, crop and
input size, normalisation, embedding type, background masking, training cells per class, metrics,
seed, versions and creation time. Loading reads only tensors and JSON: no pickle, no code runs.

We write the safetensors layout ourselves (8-byte header length, JSON header, raw little-endian
bytes) so that a fine-tuned backbone of hundreds of MB streams to disk without a second copy in
memory and a cancel between tensors stops the save. Reading goes through the safetensors library,
which validates the layout.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import DinolocError
from .files import atomic_write, check_writable
from .heads import Head, head_from_state
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .stains import OTHER, channel_order, validate_stains
from .bundle_checks import check_head_sizes, verify_checksums, with_checksums
from .tensor_files import PICKLE, DamagedFile, SAFETENSORS, TORCH_ZIP, file_kind, read_safetensors_header

SUFFIX = ".dinoloc"
METADATA_KEY = "dinoloc"
FORMAT_NAME = "napari-dinoloc model bundle"
FORMAT_VERSION = 1
HEAD_PREFIX, BACKBONE_PREFIX = "head.", "backbone."

_SAFETENSORS_DTYPES = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64", np.dtype(np.uint32): "U32", np.dtype(np.uint16): "U16", np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


@dataclass
class ModelBundle:
    head: Head
    backbone_name: str
    weights_hash: str
    stains: tuple[str, ...]  # the stain of each channel the model was trained on, in channel order
    strategy: str
    embedding: str
    crop_size: Optional[int]
    input_size: Optional[int]
    normalization: str
    mask_background: bool
    class_counts: dict[str, int]  # training cells per class
    metrics: dict  # e.g. Evaluation.to_dict(); {} if not evaluated
    seed: int
    backbone_state: Optional[dict[str, np.ndarray]] = None  # fine-tuned backbone weights, if any
    versions: dict = field(default_factory=dict)  # filled in by save/load: package, torch, numpy, created
    extra: dict = field(default_factory=dict)  # anything else JSON-able (e.g. a fine-tuned backbone's spec)
    crop_cells: Optional[float] = None  # crop_size None: the window in median cell diameters of each image

    @property
    def embed_signature(self) -> dict:
        """What shaped the embeddings the head was trained on, as in an embedding signature."""
        return {"strategy": self.strategy, "embedding": self.embedding, "crop_size": self.crop_size,
                "input_size": self.input_size, "mask_background": self.mask_background,
                "crop_mode": "fixed" if self.crop_size else "cells", "crop_cells": self.crop_cells}

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.head.class_names

    def card(self) -> str:
        """A short human-readable description of the model: classes, backbone, stains, scores."""
        macro_f1 = self.metrics.get("macro_f1") if isinstance(self.metrics, dict) else None
        lines = [
            f"head: {self.head.kind} {self.head.params}",
            f"classes: {', '.join(f'{n} ({self.class_counts.get(n, 0)} cells)' for n in self.class_names)}",
            f"backbone: {self.backbone_name} (weights sha256 {self.weights_hash[:12]})"
            + (", fine-tuned weights included" if self.backbone_state else ""),
            f"stains: {', '.join(self.stains)}; strategy: {self.strategy}; embedding: {self.embedding}",
            f"crop {f'{self.crop_size} px' if self.crop_size else f'{self.crop_cells:g} cell diameters'} -> input {self.input_size} px; normalisation: {self.normalization}; "
            f"background masked: {self.mask_background}",
            f"seed: {self.seed}" + (f"; macro F1: {macro_f1:.3f}" if isinstance(macro_f1, (int, float)) else ""),
        ]
        if self.versions:
            lines.append("made with " + ", ".join(f"{k} {v}" for k, v in self.versions.items()))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------
def save_bundle(bundle: ModelBundle, path, cancel: Optional[CancelToken] = None,
                progress: Optional[ProgressCallback] = None) -> Path:
    """Write ``bundle`` atomically; returns the path written (``.dinoloc`` is appended if missing).

    If cancelled, nothing is written and a previous file at ``path`` stays as it was.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    check_writable(path)
    tensors = _bundle_tensors(bundle)
    metadata = {METADATA_KEY: json.dumps(with_checksums(_bundle_metadata(bundle), tensors))}
    check_cancel(cancel)
    with atomic_write(path, "wb") as handle:
        write_safetensors(handle, tensors, metadata, progress, cancel)
        check_cancel(cancel)  # last chance: the rename has not happened yet
    return path


def _bundle_tensors(bundle: ModelBundle) -> dict[str, np.ndarray]:
    head_tensors, _ = bundle.head.to_state()
    tensors = {HEAD_PREFIX + name: array for name, array in head_tensors.items()}
    for name, value in (bundle.backbone_state or {}).items():
        tensors[BACKBONE_PREFIX + name] = _as_numpy(value)
    return tensors


def _as_numpy(value) -> np.ndarray:
    """numpy arrays as they are; torch tensors to CPU numpy (bfloat16, which numpy lacks, as float32)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _bundle_metadata(bundle: ModelBundle) -> dict:
    _, head_config = bundle.head.to_state()
    stains = validate_stains(bundle.stains, len(bundle.stains), need_protein=False)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "class_names": list(bundle.head.class_names),
        "head": head_config,
        "backbone": {"name": bundle.backbone_name, "weights_hash": bundle.weights_hash,
                     "fine_tuned": bool(bundle.backbone_state)},
        "stains": list(stains),
        "strategy": bundle.strategy,
        "embedding": bundle.embedding,
        "crop_size": None if bundle.crop_size is None else int(bundle.crop_size),
        "crop_cells": None if bundle.crop_cells is None else float(bundle.crop_cells),
        "input_size": None if bundle.input_size is None else int(bundle.input_size),
        "normalization": bundle.normalization,
        "mask_background": bool(bundle.mask_background),
        "class_counts": {str(k): int(v) for k, v in bundle.class_counts.items()},
        "metrics": bundle.metrics or {},
        "seed": int(bundle.seed),
        "extra": bundle.extra or {},
        "versions": _current_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise DinolocError(f"The model's metrics or extra information cannot be stored as JSON ({exc}): "
                           "pass plain numbers, strings, lists and dicts.") from exc
    return metadata


def _current_versions() -> dict[str, str]:
    from importlib import metadata

    from .. import __version__

    versions = {"napari_dinoloc": __version__}
    for package in ("torch", "numpy", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def write_safetensors(handle, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str],
                      progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> None:
    """Stream ``tensors`` in the safetensors layout to a binary file handle, checking ``cancel`` per tensor."""
    arrays = {name: _little_endian(array) for name, array in tensors.items()}
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for name, array in arrays.items():
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype.newbyteorder("=")], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the tensor data starts 8-byte aligned, as the library writes it
    handle.write(struct.pack("<Q", len(encoded)))
    handle.write(encoded)
    for done, array in enumerate(arrays.values(), start=1):
        check_cancel(cancel)
        handle.write(array.reshape(-1).view(np.uint8).data)
        report(progress, done, len(arrays), "saving the model")


def _little_endian(array) -> np.ndarray:
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _SAFETENSORS_DTYPES:
        raise DinolocError(f"Cannot store a tensor of type {array.dtype} in a model file; convert it to float32.")
    return np.asarray(array, dtype=native.newbyteorder("<"), order="C")  # (ascontiguousarray makes 0-d arrays 1-d)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_bundle(path) -> ModelBundle:
    """Read a ``.dinoloc`` file; every problem is a DinolocError that says what is wrong.

    The header is checked before any tensor is read: every size the description declares must agree
    with the tensors present and stay within sane limits, so a small crafted file cannot make the
    loader allocate large amounts of memory. A checksum mismatch means the file is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"There is no model file at {path}: check the path, or train and save a model first.")
    _refuse_other_formats(path)
    try:
        metadata, shapes = read_safetensors_header(path)
    except DamagedFile as exc:
        raise _not_a_bundle(path, exc.reason) from None
    info = _parse_metadata(metadata, path)
    check_head_sizes(info, shapes, path)
    tensors = _read_safetensors(path)
    verify_checksums(info, tensors, path)
    head = _load_head(info, tensors, path)
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    return _bundle_from_info(info, head, backbone or None, path)


def _refuse_other_formats(path: Path) -> None:
    kind = file_kind(path)
    if kind in (TORCH_ZIP, PICKLE):
        raise DinolocError(
            f"{path.name} is a PyTorch/pickle file, not a napari-dinoloc model bundle. A bundle is the .dinoloc file "
            "that napari-dinoloc writes when you save a trained model. If this is a DINO checkpoint, choose it as "
            "the backbone weights instead."
        )
    if kind != SAFETENSORS:
        raise _not_a_bundle(path, "no safetensors header")


def _not_a_bundle(path: Path, reason: str) -> DinolocError:
    return DinolocError(
        f"Cannot read {path.name}: it is not a complete model bundle ({reason}). The file is damaged, truncated "
        "or of another kind; save the model again or choose the .dinoloc file napari-dinoloc wrote."
    )


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            tensors = {name: np.array(handle.get_tensor(name)) for name in handle.keys()}
    except Exception as exc:  # the library's errors vary by version; all mean "not a valid file"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise _not_a_bundle(path, reason) from exc
    return tensors


def _parse_metadata(metadata: dict, path: Path) -> dict:
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise DinolocError(f"{path.name} is a safetensors file but not a napari-dinoloc model bundle (it has no "
                           f"'{METADATA_KEY}' description). Choose a .dinoloc file saved by napari-dinoloc.")
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DinolocError(f"The description inside {path.name} is damaged ({exc.msg}); save the model again.") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise DinolocError(f"{path.name} does not describe a napari-dinoloc model; choose a .dinoloc file saved by napari-dinoloc.")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DinolocError(f"{path.name} was written by a newer napari-dinoloc (bundle format {version}; this version "
                           f"reads format {FORMAT_VERSION} and older). Update napari-dinoloc to use it.")
    return info


def _load_head(info: dict, tensors: dict[str, np.ndarray], path: Path) -> Head:
    head_tensors = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    try:
        head = head_from_state(head_tensors, info["head"])
    except DinolocError as exc:
        raise DinolocError(f"Cannot restore the classifier from {path.name}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise DinolocError(f"The classifier stored in {path.name} is incomplete ({exc}); save the model again.") from exc
    if list(head.class_names) != list(info.get("class_names", [])):
        raise DinolocError(f"The class list of {path.name} disagrees with its classifier; the file is damaged. Save the model again.")
    return head


def _bundle_from_info(info: dict, head: Head, backbone_state, path: Path) -> ModelBundle:
    try:
        return ModelBundle(
            head=head, backbone_name=str(info["backbone"]["name"]), weights_hash=str(info["backbone"]["weights_hash"]),
            stains=tuple(info["stains"]), strategy=str(info["strategy"]), embedding=str(info["embedding"]),
            crop_size=info["crop_size"], input_size=info["input_size"], normalization=str(info["normalization"]),
            mask_background=bool(info["mask_background"]), class_counts=dict(info["class_counts"]),
            metrics=dict(info.get("metrics") or {}), seed=int(info["seed"]), backbone_state=backbone_state,
            versions={**info.get("versions", {}), "created": info.get("created", "")}, extra=dict(info.get("extra") or {}),
            crop_cells=None if info.get("crop_cells") is None else float(info["crop_cells"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DinolocError(f"The description inside {path.name} lacks {exc}; the file is damaged or incomplete. Save the model again.") from exc


# --------------------------------------------------------------------------------------------
# Does a bundle fit an image?
# --------------------------------------------------------------------------------------------
def bundle_channels(bundle: ModelBundle, stains: Sequence[str]) -> tuple[int, ...]:
    """For each channel the model was trained on, the image channel with the same stain.

    Extra image channels are ignored. 'other' channels are matched in order of appearance.
    """
    image_stains = tuple(s.lower() for s in stains)
    channels = channel_order(bundle.stains, image_stains)
    if channels is None:
        missing = _missing_stains(bundle.stains, image_stains)
        raise DinolocError(_misfit_message(bundle.stains, image_stains, missing))
    return channels


def check_bundle_fits(bundle: ModelBundle, stains: Sequence[str]) -> None:
    """Refuse (DinolocError naming the stains) when the image lacks a stain the model was trained on."""
    bundle_channels(bundle, stains)


def _missing_stains(needed: Sequence[str], available: Sequence[str]) -> list[str]:
    missing = [s for s in needed if s != OTHER and s not in available]
    extra_others = sum(s == OTHER for s in needed) - sum(s == OTHER for s in available)
    return missing + [OTHER] * max(extra_others, 0)


def _misfit_message(needed: Sequence[str], available: Sequence[str], missing: Sequence[str]) -> str:
    return (
        f"This model was trained on images with the stains {', '.join(needed)}; this image has "
        f"{', '.join(available) or 'no named stains'}, so it lacks {', '.join(missing)}. Say which channel holds each "
        f"of those stains (e.g. --channels protein=1,nucleus=0), use an image that has them, or train a model on "
        f"this image's stains."
    )


# --------------------------------------------------------------------------------------------
# Bundles <-> the backbone and embedding settings they were made with
# --------------------------------------------------------------------------------------------
def bundle_for_head(head: Head, backbone, stains: Sequence[str], settings, classes: Sequence[str],
                    metrics: Optional[dict] = None, seed: int = 0) -> ModelBundle:
    """The bundle of a head trained on frozen embeddings of ``backbone`` made with ``settings``."""
    from collections import Counter

    from .backbones import numpy_state

    resolved = settings.resolved(backbone)
    state, extra = None, {}
    if backbone.is_finetuned:  # the bundle must carry the fine-tuned weights themselves
        state = numpy_state(backbone.model)
        extra = {"finetune": {"base_weights_hash": backbone.base_weights_hash}}
    if getattr(backbone, "is_classic", False):  # the classic features' training statistics
        extra = {**extra, **backbone.bundle_extra()}
    return ModelBundle(
        head=head, backbone_name=backbone.name, weights_hash=backbone.weights_hash, stains=tuple(stains),
        strategy=resolved.strategy, embedding=resolved.embedding, crop_size=resolved.crop_size,
        input_size=resolved.input_size, normalization=backbone.spec.normalization,
        mask_background=resolved.mask_background, class_counts=dict(Counter(classes)), metrics=dict(metrics or {}), seed=seed,
        backbone_state=state, extra=extra, crop_cells=None if resolved.crop_size else resolved.crop_cells,
    )


def finetune_bundle(result, backbone) -> ModelBundle:
    """The model bundle of a fine-tuning result (``finetune.FinetuneResult``): the head, the fine-tuned weights and how they were made.

    ``weights_hash`` is the fine-tuned weights' hash (what ``apply_finetuned`` gives the loaded model);
    ``extra["finetune"]["base_weights_hash"]`` names the weights fine-tuning started from.
    """
    settings, embed = result.settings, result.embed_settings
    extra = {"finetune": {"level": result.level, "base_weights_hash": backbone.base_weights_hash,
                          "settings": asdict(settings), "history": result.history}}
    return ModelBundle(
        head=result.head, backbone_name=backbone.name, weights_hash=result.weights_hash, stains=result.stains,
        strategy=embed.strategy, embedding=embed.embedding, crop_size=embed.crop_size, input_size=embed.input_size,
        normalization=backbone.spec.normalization, mask_background=embed.mask_background,
        class_counts=dict(result.class_counts), metrics=dict(result.metrics), seed=settings.seed,
        backbone_state=result.backbone_state, extra=extra, crop_cells=None if embed.crop_size else embed.crop_cells,
    )



def embed_settings_for(bundle: ModelBundle, base):
    """``base`` (device, batch size, precision) with everything that shapes the embedding from the bundle."""
    from .embedding import EmbedSettings

    return EmbedSettings.from_signature(bundle.embed_signature, base)


def backbone_for_bundle(bundle: ModelBundle, weights=None, device: str = "auto"):
    """The backbone the bundle's head expects: same weights (checked by hash), fine-tuned if it was."""
    from .classic import is_classic_name, load_features

    base_hash = bundle.extra.get("finetune", {}).get("base_weights_hash", bundle.weights_hash)
    backbone = load_features(bundle.backbone_name, weights=weights, device=device)
    if is_classic_name(bundle.backbone_name):
        backbone.restore(bundle.extra)
    if backbone.weights_hash != base_hash:
        raise DinolocError(
            f"This model was made with {bundle.backbone_name} weights {base_hash[:24]}, but the weights loaded are "
            f"{backbone.weights_hash[:24]}: give the weights file it was trained with (--weights, or the weights field)."
        )
    if bundle.backbone_state:
        from .backbones import apply_finetuned

        backbone = apply_finetuned(backbone, bundle.backbone_state)
    return backbone
