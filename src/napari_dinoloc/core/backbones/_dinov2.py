"""DINOv2 / Cell-DINO checkpoints (Meta's ``dinov2`` layout) as timm ViT state dicts.

The hub layout differs from timm's in three places: register tokens are ``register_tokens`` (timm:
``reg_token``); with registers, DINOv2 adds ``pos_embed[:, 0]`` to the CLS token and gives registers
no position (timm's ``no_embed_class`` model: the CLS position folded into ``cls_token``); training
checkpoints with ``block_chunks`` name blocks ``blocks.<chunk>.<index>``. Layer scale
(``blocks.N.ls1.gamma``) and the MLP keys are the same as timm's; ``mask_token`` is training-only.
"""

from __future__ import annotations

import re

_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_HEAD_PREFIXES = ("dino_head.", "ibot_head.")  # DINOv2 projection heads: not part of the backbone


def is_dinov2_layout(state: dict) -> bool:
    return "register_tokens" in state or any(_CHUNKED_BLOCK.match(k) for k in state)


def dinov2_to_timm(state: dict) -> dict:
    """A timm VisionTransformer state dict from a DINOv2-layout one (other layouts pass unchanged)."""
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    if not is_dinov2_layout(state):
        return state
    out = {}
    for key, value in state.items():
        out[_CHUNKED_BLOCK.sub(r"blocks.\1.", key)] = value
    registers = out.pop("register_tokens", None)
    if registers is not None and "pos_embed" in out and "cls_token" in out:
        pos = out["pos_embed"]
        out["reg_token"] = registers
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    elif registers is not None:
        out["reg_token"] = registers
    return out
