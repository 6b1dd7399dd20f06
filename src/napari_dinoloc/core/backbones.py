"""Backbones: a timm ViT architecture + a weights source + what its input means.

Weights come from the timm hub (``source="timm"``), from a local file the user gives
(``source="file"``; DINO training checkpoints, plain state dicts, safetensors) or from a seeded random
initialisation (``source="random"``, only when the name says so: never a silent fallback).
Checkpoints are read without running pickled code.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .devices import resolve_device
from .errors import DinolocError
from .files import atomic_write, hash_file
from .stains import HPA_SLOTS, PROTEIN, RGB_SLOTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "self")
SELF_NORM_EPS = 1e-7  # DINO4Cells' self-normalisation epsilon
RANDOM_SEED = 0
SPEC_METADATA_KEY = "dinoloc.spec"  # safetensors metadata written by save_backbone_weights()

DINO_PAPER = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers (ICCV 2021)"
DINOV2_PAPER = "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision (TMLR 2024)"
DINO4CELLS_PAPER = "Doron, Moutakanni et al., Unbiased single-cell morphology with self-supervised vision transformers (DINO4Cells)"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    paper: str
    source: str  # "timm" | "file" | "random"
    arch: str | None  # timm model name; None: built from arch_kwargs (or inferred from a checkpoint)
    slots: tuple[str, ...]  # stain of each input slot
    normalization: str  # "imagenet" | "self"
    input_size: int
    patch_size: int
    arch_kwargs: dict = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        return len(self.slots)


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.source not in ("timm", "file", "random"):
        raise ValueError(f"unknown backbone source {spec.source!r}")
    if spec.normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {spec.normalization!r}")
    if spec.normalization == "imagenet" and len(spec.slots) != 3:
        raise ValueError("ImageNet normalisation needs exactly 3 (RGB) slots")
    BACKBONES[spec.name] = spec
    return spec


def _register_defaults() -> None:
    for size, width in (("s", "small"), ("b", "base")):
        for patch in (16, 8):
            register_backbone(BackboneSpec(
                name=f"dino-vit{size}{patch}",
                description=f"DINO ViT-{size.upper()}/{patch} pretrained on ImageNet-1k (3 channels, RGB slots).",
                paper=DINO_PAPER, source="timm", arch=f"vit_{width}_patch{patch}_224.dino",
                slots=RGB_SLOTS, normalization="imagenet", input_size=224, patch_size=patch,
            ))
    register_backbone(BackboneSpec(
        name="dinov2-vits14",
        description="DINOv2 ViT-S/14 (LVD-142M), run at 224 px (3 channels, RGB slots).",
        paper=DINOV2_PAPER, source="timm", arch="vit_small_patch14_dinov2.lvd142m",
        slots=RGB_SLOTS, normalization="imagenet", input_size=224, patch_size=14,
        arch_kwargs={"img_size": 224},
    ))
    register_backbone(BackboneSpec(
        name="hpa-dino-vits16",
        description="DINO4Cells 4-channel ViT-S/16 trained on HPA (microtubules, protein, nucleus, ER); "
                    "needs the checkpoint file (--weights).",
        paper=DINO4CELLS_PAPER, source="file", arch="vit_small_patch16_224",
        slots=HPA_SLOTS, normalization="self", input_size=224, patch_size=16,
        arch_kwargs={"in_chans": 4},
    ))
    register_backbone(BackboneSpec(
        name="checkpoint",
        description="Any local ViT checkpoint; the architecture is read from the file "
                    "(4 channels: HPA slots, 3: RGB slots, 1: protein only).",
        paper=DINO_PAPER, source="file", arch=None,
        slots=RGB_SLOTS, normalization="imagenet", input_size=224, patch_size=16,
    ))
    register_backbone(BackboneSpec(
        name="random",
        description="ViT-S/16 with seeded random weights: a baseline, and the cost of dino-vits16 offline.",
        paper="", source="random", arch="vit_small_patch16_224",
        slots=RGB_SLOTS, normalization="imagenet", input_size=224, patch_size=16,
    ))
    register_backbone(BackboneSpec(
        name="random-tiny",
        description="Tiny ViT with seeded random weights, for tests (patch 8, 64 dims, 2 blocks, 32 px).",
        paper="", source="random", arch=None,
        slots=RGB_SLOTS, normalization="imagenet", input_size=32, patch_size=8,
        arch_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
    ))


_register_defaults()


@dataclass
class LoadedBackbone:
    spec: BackboneSpec
    model: Any  # torch.nn.Module, eval mode, on ``device``
    weights_hash: str
    embed_dim: int
    device: Any  # torch.device
    #: reduced-precision checks already passed or failed with this model: see embedding.Embedder
    #: (init=False: dataclasses.replace, e.g. with fine-tuned weights, starts a fresh record)
    precision_checks: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    #: set on fine-tuned backbones (finetune.apply_finetuned): the weights fine-tuning started from
    base_weights_hash: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 1))

    def tokens(self, x):
        """(B, S, H, W) normalised input -> (B, N, D) normed tokens, prefix (CLS) tokens first."""
        return self.model.forward_features(x.to(self.device))


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise DinolocError(f"Unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}.") from None


def load_backbone(name: str, weights: str | Path | None = None, device: str = "auto") -> LoadedBackbone:
    """The backbone ``name`` with its weights, in eval mode on ``device``.

    A local ``weights`` file overrides the hub for timm backbones; ``file`` backbones need one.
    """
    spec = get_spec(name)
    torch_device = resolve_device(device)
    if weights is not None:
        model, spec, weights_hash = _model_from_file(spec, Path(weights))
    elif spec.source == "timm":
        model, weights_hash = _model_from_hub(spec), f"timm:{spec.arch}"
    elif spec.source == "random":
        model, weights_hash = _seeded_random_model(spec), f"random:{RANDOM_SEED}"
    else:
        raise DinolocError(
            f"The backbone {spec.name!r} needs a local weights file: give it with --weights path/to/checkpoint.pth "
            f"(in napari: the weights file field). {spec.description}"
        )
    model.eval().to(torch_device)
    return LoadedBackbone(spec=spec, model=model, weights_hash=weights_hash,
                          embed_dim=int(model.embed_dim), device=torch_device)


# --- building models -------------------------------------------------------------------------

def _build_model(spec: BackboneSpec, pretrained: bool = False):
    # dynamic_img_size: any input size works (position embeddings are resampled only when it differs)
    common = {"num_classes": 0, "dynamic_img_size": True}
    if spec.arch is None:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**{**common, **spec.arch_kwargs})
    import timm

    return timm.create_model(spec.arch, pretrained=pretrained, **{**common, **spec.arch_kwargs})


def _seeded_random_model(spec: BackboneSpec):
    import torch

    with torch.random.fork_rng(devices=[]):  # same weights every load, global RNG untouched
        torch.manual_seed(RANDOM_SEED)
        return _build_model(spec)


def _model_from_hub(spec: BackboneSpec):
    try:
        return _build_model(spec, pretrained=True)
    except Exception as exc:  # network, hub cache or HTTP errors all mean the same to the user
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DinolocError(
            f"The weights of {spec.name!r} ({spec.arch}) could not be downloaded ({reason}). "
            "Connect to the internet once (they are cached afterwards), or download the weights file "
            "yourself and give it with --weights path/to/file (in napari: the weights file field)."
        ) from exc


def _model_from_file(spec: BackboneSpec, path: Path):
    state = read_checkpoint(path)
    if spec.arch is None and not spec.arch_kwargs:  # the generic 'checkpoint' entry
        spec = infer_spec(state, _safetensors_spec(path), name=spec.name)
    model = _build_model(spec)
    load_weights_into(model, state, spec, path)
    return model, spec, weights_file_hash(path)


# --- reading checkpoints safely --------------------------------------------------------------

_DROP_PREFIXES = ("module.", "backbone.", "_orig_mod.")  # DDP, DINO's MultiCropWrapper, torch.compile
_NESTED_KEYS = ("teacher", "state_dict", "model")  # DINO evaluates the teacher, not the student
_DROP_KEYS = ("mask_token",)  # DINOv2 training-only token


def read_checkpoint(path: str | Path) -> dict:
    """The backbone state dict stored in ``path`` (safetensors or a torch file), read without running code.

    DINO training checkpoints yield their teacher; ``module.``/``backbone.`` prefixes are stripped and
    the DINO projection head (``head.*``) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"The weights file {path} does not exist. Check the path given with --weights.")
    raw = _read_safetensors(path) if _looks_like_safetensors(path) else _read_torch_file(path)
    return _backbone_state(raw, path)


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


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
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise DinolocError(
                f"Refusing to load {path.name}: it contains a pickled Python object ({found.group(1)}) that could "
                "run code when loaded. Use a checkpoint that holds only tensors (a state dict .pth or .safetensors); "
                "if you trust its source, convert it to safetensors yourself."
            ) from None
        raise _damaged(path, exc) from exc
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


# --- fitting a state dict to an architecture --------------------------------------------------

def load_weights_into(model, state: dict, spec: BackboneSpec, path: Path) -> None:
    """Load ``state`` into ``model`` or refuse, naming what differs."""
    state = _resample_pos_embed(model, state)
    problems = _shape_problems(model, state) or _key_problems(model, state)
    if problems:
        raise DinolocError(
            f"The weights file {path.name} does not fit the backbone {spec.name!r}: {'; '.join(problems)}. "
            "Choose the backbone the file was trained for, or 'checkpoint' to read the architecture from the file."
        )
    model.load_state_dict(state, strict=True)


def _shape_problems(model, state: dict) -> list[str]:
    expected = model.state_dict()
    problems = []
    patch = state.get("patch_embed.proj.weight")
    if patch is not None and patch.ndim == 4:
        want = expected["patch_embed.proj.weight"].shape
        if patch.shape[1] != want[1]:
            problems.append(f"patch embedding expects {want[1]} input channels, the file has {patch.shape[1]}")
        if patch.shape[0] != want[0]:
            problems.append(f"embedding width expected {want[0]}, the file has {patch.shape[0]}")
        if tuple(patch.shape[2:]) != tuple(want[2:]):
            problems.append(f"patch size expected {want[2]}, the file has {patch.shape[2]}")
        if problems:
            return problems
    mismatched = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    for key in mismatched[:3]:
        problems.append(f"{key} expected shape {tuple(expected[key].shape)}, the file has {tuple(state[key].shape)}")
    if len(mismatched) > 3:
        problems.append(f"and {len(mismatched) - 3} more tensors of other shapes")
    return problems


def _key_problems(model, state: dict) -> list[str]:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    problems = []
    depth_model, depth_file = _depth(expected), _depth(state)
    if depth_model != depth_file:
        problems.append(f"the backbone has {depth_model} transformer blocks, the file has {depth_file}")
    if missing:
        problems.append(f"missing from the file: {_brief(missing)}")
    if unexpected:
        problems.append(f"not used by the backbone: {_brief(unexpected)}")
    return problems


def _brief(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _depth(keys) -> int:
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def _resample_pos_embed(model, state: dict) -> dict:
    """A checkpoint trained at another image size fits after resampling its position embeddings."""
    pos = state.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is None or target is None or pos.shape == target.shape or pos.shape[-1] != target.shape[-1]:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    old_grid = math.isqrt(pos.shape[1] - prefix)
    if old_grid * old_grid != pos.shape[1] - prefix:
        return state  # not a square grid: let the shape check report it
    resampled = resample_abs_pos_embed(pos, new_size=list(model.patch_embed.grid_size),
                                       old_size=[old_grid, old_grid], num_prefix_tokens=prefix)
    return {**state, "pos_embed": resampled}


# --- inferring the architecture of a checkpoint ----------------------------------------------

def infer_spec(state: dict, stored: dict | None = None, name: str = "checkpoint") -> BackboneSpec:
    """A BackboneSpec read from the state dict's shapes (or from metadata this plugin stored)."""
    if stored:
        return _spec_from_metadata(stored, name)
    patch = state.get("patch_embed.proj.weight")
    if patch is None or patch.ndim != 4:
        raise DinolocError("The file has no ViT patch embedding (patch_embed.proj.weight): it is not a ViT checkpoint napari-dinoloc can read.")
    dim, in_chans, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    slots, normalization = _slots_for_channels(in_chans)
    kwargs = _arch_kwargs_from_state(state, dim, in_chans, patch_size)
    return BackboneSpec(
        name=name, description=f"ViT read from a checkpoint: {dim} dims, patch {patch_size}, {in_chans} channel(s)",
        paper=DINO_PAPER, source="file", arch=None, slots=slots, normalization=normalization,
        input_size=kwargs["img_size"], patch_size=patch_size, arch_kwargs=kwargs,
    )


def _slots_for_channels(in_chans: int) -> tuple[tuple[str, ...], str]:
    if in_chans == 4:
        return HPA_SLOTS, "self"
    if in_chans == 3:
        return RGB_SLOTS, "imagenet"
    if in_chans == 1:
        return (PROTEIN,), "self"
    raise DinolocError(
        f"The checkpoint's model takes {in_chans} input channels; napari-dinoloc knows what 1 (protein), "
        "3 (RGB) or 4 (HPA: microtubules, protein, nucleus, ER) channels mean."
    )


def _arch_kwargs_from_state(state: dict, dim: int, in_chans: int, patch_size: int) -> dict:
    depth = _depth(state)
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if depth == 0 or fc1 is None:
        raise DinolocError("The file has no ViT transformer blocks (blocks.N.*): it is not a ViT checkpoint napari-dinoloc can read.")
    class_token = "cls_token" in state
    reg_tokens = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    kwargs = dict(
        img_size=224, patch_size=patch_size, in_chans=in_chans, embed_dim=dim, depth=depth,
        num_heads=max(1, dim // 64),  # not stored in weights; every DINO ViT (tiny/small/base/large) uses 64-dim heads
        mlp_ratio=fc1.shape[0] / dim, qkv_bias="blocks.0.attn.qkv.bias" in state,
        init_values=1.0 if "blocks.0.ls1.gamma" in state else None,  # layer scale (DINOv2); values come from the file
        class_token=class_token, reg_tokens=reg_tokens,
        global_pool="token" if class_token else "avg",
    )
    pos = state.get("pos_embed")
    if pos is not None:
        tokens = int(pos.shape[1])
        prefix = int(class_token) + reg_tokens
        grid = math.isqrt(tokens - prefix)
        if grid * grid != tokens - prefix and math.isqrt(tokens) ** 2 == tokens:
            grid, kwargs["no_embed_class"] = math.isqrt(tokens), True
        kwargs["img_size"] = grid * patch_size
    return kwargs


def _safetensors_spec(path: Path) -> dict | None:
    if not _looks_like_safetensors(path):
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(SPEC_METADATA_KEY)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _spec_from_metadata(stored: dict, name: str) -> BackboneSpec:
    try:
        return BackboneSpec(
            name=name, description=stored.get("description", ""), paper=stored.get("paper", ""), source="file",
            arch=stored.get("arch"), slots=tuple(stored["slots"]), normalization=stored["normalization"],
            input_size=int(stored["input_size"]), patch_size=int(stored["patch_size"]),
            arch_kwargs=dict(stored.get("arch_kwargs", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DinolocError(f"The backbone description stored in the weights file is incomplete ({exc}). Save the backbone again.") from exc


def save_backbone_weights(backbone: LoadedBackbone, path: str | Path) -> None:
    """Write the backbone as safetensors with its spec, so ``load_backbone('checkpoint', path)`` restores it exactly.

    The 'checkpoint' entry can otherwise only guess what shapes do not store (attention heads, slot meaning).
    """
    from safetensors.torch import save

    spec = backbone.spec
    arch_kwargs = dict(spec.arch_kwargs)
    if spec.arch is None:
        arch_kwargs.setdefault("num_heads", backbone.model.blocks[0].attn.num_heads)
    stored = {k: v for k, v in asdict(replace(spec, arch_kwargs=arch_kwargs)).items() if k not in ("name", "source")}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in backbone.model.state_dict().items()}
    blob = save(tensors, metadata={SPEC_METADATA_KEY: json.dumps(stored)})
    with atomic_write(path, "wb") as handle:
        handle.write(blob)


def normalize(x, spec: BackboneSpec):
    """(B, S, H, W) slots in raw [0, 1] intensity -> the model's input scale.

    'self' (DINO4Cells): per crop and channel (x - mean) / (std + 1e-7); an all-zero slot stays zero.
    'imagenet': per-slot ImageNet mean/std (slot i is colour i).
    """
    import torch

    if spec.normalization == "self":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), correction=0, keepdim=True)  # population std, as Cell-DINO
        return (x - mean) / (std + SELF_NORM_EPS)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
