"""The channel-agnostic MAE encoder (CA-MAE; Kraus et al., CVPR 2024; OpenPhenom) as a backbone.

Every stain goes through one shared one-channel patch embedding; the tokens are ordered stain by
stain (all patches of the first stain, then of the second, ...), each stain's patches getting the
same 2-D position embedding; a CLS token leads. So a model serves any number and order of stains.
The published blocks are timm's parallel-scaling blocks with QK norm, no qkv bias, layer scale.

Published weights (``maes_microscopy``'s MAEModel) hold the encoder as ``encoder.vit_backbone.*``
beside the decoder, and a fixed sin-cos ``pos_embed`` of 1 + (max stains) x (patches per stain)
tokens: the encoder is taken, the position embedding of one stain kept.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DinolocError

CA_MAE_ARCH = "ca-mae"
ENCODER_PREFIXES = ("encoder.vit_backbone.", "vit_backbone.")
INSTANCE_NORM_EPS = 1e-5  # torch's InstanceNorm2d, which CA-MAE uses after /255


def build_ca_mae(img_size: int = 256, patch_size: int = 16, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, mlp_ratio: float = 4.0, init_values: float = 1e-4, **_ignored):
    from timm.models.vision_transformer import ParallelScalingBlock, VisionTransformer

    class ChannelAgnosticEncoder(VisionTransformer):
        @property
        def tokens_per_stain(self) -> int:
            return int(self.pos_embed.shape[1]) - 1

        def forward_features(self, x):
            """(B, C, H, W) any number of stains -> (B, 1 + C*N, D) normed tokens, stain by stain."""
            import torch

            batch, stains, height, width = x.shape
            patches = self.patch_embed.proj(x.reshape(batch * stains, 1, height, width))  # one shared embedding
            grid = patches.shape[-2:]
            patches = patches.flatten(2).transpose(1, 2)  # (B*C, N, D)
            patches = (patches + self._stain_positions(grid)).reshape(batch, -1, patches.shape[-1])
            cls = self.cls_token.expand(batch, -1, -1) + self.pos_embed[:, :1]
            tokens = self.norm_pre(torch.cat([cls, patches], dim=1))
            return self.norm(self.blocks(tokens))

        def _stain_positions(self, grid):
            positions = self.pos_embed[:, 1:]
            side = round(self.tokens_per_stain ** 0.5)
            if tuple(grid) == (side, side):
                return positions
            from timm.layers import resample_abs_pos_embed

            return resample_abs_pos_embed(positions, new_size=list(grid), old_size=[side, side], num_prefix_tokens=0)

    return ChannelAgnosticEncoder(
        img_size=img_size, patch_size=patch_size, in_chans=1, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, qkv_bias=False, qk_norm=True, init_values=init_values, block_fn=ParallelScalingBlock,
        class_token=True, num_classes=0, fc_norm=False,
    )


def ca_mae_state(state: dict, tokens_per_stain: int, path: Path) -> dict:
    """The encoder's tensors of a published CA-MAE file, the position embedding of one stain kept;
    a refusal naming what differs when the file is not such an encoder."""
    encoder = {}
    for key, value in state.items():
        prefix = next((p for p in ENCODER_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            encoder[key[len(prefix):]] = value
    encoder = encoder or dict(state)  # an encoder saved on its own
    pos = encoder.get("pos_embed")
    if pos is None or pos.ndim != 3:
        raise DinolocError(f"{path.name} has no CA-MAE encoder position embedding (encoder.vit_backbone.pos_embed): "
                           "it is not a channel-agnostic MAE file. Choose the OpenPhenom / CA-MAE weights file.")
    patches = int(pos.shape[1]) - 1
    if patches < tokens_per_stain or patches % tokens_per_stain:
        raise DinolocError(
            f"The position embedding of {path.name} holds {patches} patch positions, not a multiple of the "
            f"{tokens_per_stain} patches of one stain this CA-MAE backbone expects: the file was trained at another "
            "image or patch size. Choose the matching backbone or file.")
    encoder["pos_embed"] = pos[:, :1 + tokens_per_stain]
    return encoder
