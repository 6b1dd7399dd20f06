"""Fitting a state dict to an architecture: shape and key problems named for the user, position
embeddings resampled, and the architecture of a bare checkpoint inferred from its tensors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..errors import DinolocError
from ..stains import CELL_PAINTING_SLOTS, HPA_SLOTS, NUCLEUS, PROTEIN, RGB_SLOTS
from ..tensor_files import check_limit
from ._checkpoint import is_safetensors
from ._registry import BACKBONES, DINO_PAPER, BackboneSpec

SPEC_METADATA_KEY = "dinoloc.spec"  # safetensors metadata written by save_backbone_weights()


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

def infer_spec(state: dict, stored: dict | None = None, name: str = "checkpoint", path: Path | None = None) -> BackboneSpec:
    """A BackboneSpec read from the state dict's shapes (or from metadata this plugin stored)."""
    if stored:
        return _spec_from_metadata(stored, name, path)
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


#: What a registered architecture declares that a file must match, worded as load_weights_into words it.
_DECLARED = (("in_chans", "patch embedding expects {} input channels, the file has {}"),
             ("patch_size", "patch size expected {}, the file has {}"),
             ("embed_dim", "embedding width expected {}, the file has {}"),
             ("depth", "the backbone has {} transformer blocks, the file has {}"))


def spec_from_declared(spec: BackboneSpec, state: dict, path: Path) -> BackboneSpec:
    """``spec`` (a registered file backbone: slots, size, normalisation) with the architecture read from
    ``state`` (layer scale, registers, position layout), or a refusal naming what differs from ``spec``."""
    found = infer_spec(state, name=spec.name, path=path).arch_kwargs
    differences = [words.format(spec.arch_kwargs[key], found[key])
                   for key, words in _DECLARED if key in spec.arch_kwargs and spec.arch_kwargs[key] != found[key]]
    if differences:
        raise DinolocError(
            f"The weights file {path.name} does not fit the backbone {spec.name!r} ({'; '.join(differences)}). "
            "Choose the file this backbone names, or 'checkpoint' to read the architecture from the file."
        )
    kwargs = {**found, "num_heads": spec.arch_kwargs.get("num_heads", found["num_heads"])}
    return BackboneSpec(name=spec.name, description=spec.description, paper=spec.paper, source=spec.source,
                        arch=None, slots=spec.slots, normalization=spec.normalization,
                        input_size=spec.input_size, patch_size=spec.patch_size, arch_kwargs=kwargs)


def _slots_for_channels(in_chans: int) -> tuple[tuple[str, ...], str]:
    if in_chans == 5:
        return CELL_PAINTING_SLOTS, "self"  # Cell-DINO's Cell Painting models
    if in_chans == 4:
        return HPA_SLOTS, "self"
    if in_chans == 3:
        return RGB_SLOTS, "imagenet"
    if in_chans == 2:
        return (PROTEIN, NUCLEUS), "self"  # napari-dinoloc's own cell models (core.pretrain)
    if in_chans == 1:
        return (PROTEIN,), "self"
    raise DinolocError(
        f"The checkpoint's model takes {in_chans} input channels; napari-dinoloc knows what 1 (protein), "
        "2 (protein, nucleus), 3 (RGB), 4 (HPA: microtubules, protein, nucleus, ER) or 5 (Cell Painting: "
        "DNA, RNA, ER, AGP, Mito) channels mean."
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
        # a square count with a prefix: no position for CLS/registers (timm's DINOv2-with-registers layout)
        if prefix and math.isqrt(tokens) ** 2 == tokens and (reg_tokens or grid * grid != tokens - prefix):
            grid, kwargs["no_embed_class"] = math.isqrt(tokens), True
        kwargs["img_size"] = grid * patch_size
    return kwargs


def _safetensors_spec(path: Path) -> dict | None:
    if not is_safetensors(path):
        return None
    from ..tensor_files import read_safetensors_header

    text = read_safetensors_header(path)[0].get(SPEC_METADATA_KEY)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


# Sizes a weights file may declare for its architecture; anything larger is a damaged or crafted file.
ARCH_LIMITS = {"embed_dim": 4096, "depth": 64, "num_heads": 64, "patch_size": 64, "img_size": 1024,
               "in_chans": 16, "reg_tokens": 64, "mlp_ratio": 16}


def _spec_from_metadata(stored: dict, name: str, path: Path | None = None) -> BackboneSpec:
    where = path or Path("the weights file")
    if not isinstance(stored, dict):
        raise DinolocError(f"The backbone description stored in {where.name} is not readable. Save the backbone again.")
    try:
        spec = BackboneSpec(
            name=name, description=str(stored.get("description", "")), paper=str(stored.get("paper", "")), source="file",
            arch=check_arch(stored.get("arch"), where), slots=tuple(stored["slots"]), normalization=stored["normalization"],
            input_size=check_limit("an input size of", stored["input_size"], ARCH_LIMITS["img_size"], where),
            patch_size=check_limit("a patch size of", stored["patch_size"], ARCH_LIMITS["patch_size"], where),
            arch_kwargs=dict(stored.get("arch_kwargs", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DinolocError(f"The backbone description stored in the weights file is incomplete ({exc}). Save the backbone again.") from exc
    for key, value in spec.arch_kwargs.items():
        if key in ARCH_LIMITS and value is not None:
            limit = ARCH_LIMITS[key]
            if key == "mlp_ratio":  # a fraction: within 0..limit
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= limit:
                    raise DinolocError(f"{where.name} declares an MLP ratio of {value!r}, outside 0 to {limit}: "
                                       "the file is damaged or crafted. Choose another file.")
            else:
                check_limit(f"{key} =", value, limit, where)
    return spec


def check_arch(arch, path: Path) -> str | None:
    """An architecture name read from a file: a registered one or a plain timm name; never a hub address.

    timm fetches ``hf-hub:``/``timm/`` names from the internet, so a file must not choose one.
    """
    if arch is None:
        return None
    if isinstance(arch, str) and ":" not in arch and "/" not in arch:
        registered = {BACKBONES[n].arch for n in BACKBONES.names()}
        if arch in registered:
            return arch
        import timm

        if arch.split(".")[0] in timm.list_models():
            return arch
    raise DinolocError(f"{path.name} names the architecture {arch!r}, which is not a known timm architecture "
                       "(model hub addresses are never followed from a file). Choose another weights file, "
                       "or the registered backbone it belongs to.")
