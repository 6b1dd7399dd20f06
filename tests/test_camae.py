"""CA-MAE (channel-agnostic MAE, OpenPhenom): a file in the published layout embeds any number of stains,
each stain's part equal to a reference computation of the same encoder written here."""

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import ParallelScalingBlock, VisionTransformer

from napari_dinoloc.core.backbones import BACKBONES, BackboneSpec, load_backbone, register_backbone
from napari_dinoloc.core.backbones._camae import CA_MAE_ARCH
from napari_dinoloc.core.embedding import Embedder, EmbedSettings
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.stains import CELL_PAINTING_SLOTS, STAIN_ROLES

SIZE, PATCH, DIM, MAX_STAINS = 32, 8, 64, 6
GRID = SIZE // PATCH


def reference_encoder(seed=5):
    """The published encoder's pieces: a timm ViT with parallel-scaling blocks, QK norm, no qkv bias,
    layer scale, a one-channel patch embedding."""
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=SIZE, patch_size=PATCH, in_chans=1, embed_dim=DIM, depth=2, num_heads=2,
                            qkv_bias=False, qk_norm=True, init_values=1e-4, block_fn=ParallelScalingBlock,
                            num_classes=0, fc_norm=False).eval()
    with torch.no_grad():
        for param in vit.parameters():
            param.add_(0.05 * torch.randn_like(param))
    positions = torch.randn(1, GRID * GRID, DIM)  # one stain's 2-D positions (sin-cos in the real file)
    return vit, positions


def published_file(path, vit, positions):
    """maes_microscopy's MAEModel layout: {'state_dict': encoder.vit_backbone.*, decoder.*, ...}."""
    state = {f"encoder.vit_backbone.{k}": v for k, v in vit.state_dict().items()}
    state["encoder.vit_backbone.pos_embed"] = torch.cat(
        [torch.zeros(1, 1, DIM), positions.repeat(1, MAX_STAINS, 1)], dim=1)  # zero for CLS, repeated per stain
    state["decoder.mask_token"] = torch.zeros(1, 1, 32)
    state["decoder.blocks.0.norm1.weight"] = torch.ones(32)
    state["encoder_decoder_proj.weight"] = torch.zeros(32, DIM)
    state["decoder_pred.weight"] = torch.zeros(PATCH * PATCH, 32)
    torch.save({"state_dict": state}, path)


def reference_tokens(vit, positions, pixels_uint8):
    """uint8 /255, instance norm per image and stain, shared patch embedding per stain, stain-major tokens."""
    x = torch.nn.InstanceNorm2d(pixels_uint8.shape[1], affine=False)(pixels_uint8.float() / 255.0)
    per_stain = [vit.patch_embed.proj(x[:, i:i + 1]).flatten(2).transpose(1, 2) + positions for i in range(x.shape[1])]
    tokens = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1)] + per_stain, dim=1)
    return vit.norm(vit.blocks(vit.norm_pre(tokens)))


@pytest.fixture(scope="module")
def camae(tmp_path_factory):
    vit, positions = reference_encoder()
    path = tmp_path_factory.mktemp("camae") / "phenom.pth"
    published_file(path, vit, positions)
    register_backbone(BackboneSpec(
        name="ca-mae-tiny", description="", paper="", source="file", arch=CA_MAE_ARCH, slots=CELL_PAINTING_SLOTS,
        normalization="instance", input_size=SIZE, patch_size=PATCH,
        arch_kwargs={"img_size": SIZE, "patch_size": PATCH, "embed_dim": DIM, "depth": 2, "num_heads": 2}))
    try:
        yield load_backbone("ca-mae-tiny", path, device="cpu"), vit, positions, path
    finally:
        del BACKBONES["ca-mae-tiny"]


@pytest.mark.parametrize("stains", [("protein", "nucleus"), ("dna", "er", "mito"), CELL_PAINTING_SLOTS])
def test_any_number_of_stains_matches_the_reference(camae, stains):
    backbone, vit, positions, _ = camae
    rng = np.random.default_rng(len(stains))
    pixels = rng.integers(0, 256, (2, len(stains), SIZE, SIZE), dtype=np.uint8)
    crops = pixels.astype(np.float32) / 255.0
    order = sorted(range(len(stains)), key=lambda i: STAIN_ROLES.index({"dna": "nucleus"}.get(stains[i], stains[i])))
    with torch.inference_mode():
        reference = reference_tokens(vit, positions, torch.from_numpy(pixels[:, order]))
    n = GRID * GRID
    means = Embedder(backbone, EmbedSettings(strategy="all-stains", embedding="stain-means", precision="fp32"))
    vectors = means.embed_batch(crops, stains)
    assert vectors.shape == (2, len(stains) * DIM) == (2, means.output_dim(stains))
    for part in range(len(stains)):
        expected = reference[:, 1 + part * n:1 + (part + 1) * n].mean(dim=1).numpy()
        assert np.abs(vectors[:, part * DIM:(part + 1) * DIM] - expected).max() < 1e-5
    mean = Embedder(backbone, EmbedSettings(strategy="all-stains", embedding="mean", precision="fp32"))
    assert np.abs(mean.embed_batch(crops, stains) - reference[:, 1:].mean(dim=1).numpy()).max() < 1e-5


def test_the_order_of_channels_in_the_file_does_not_matter(camae):
    backbone = camae[0]
    crops = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    embed = Embedder(backbone, EmbedSettings(strategy="all-stains", embedding="stain-means", precision="fp32")).embed_batch
    np.testing.assert_allclose(embed(crops, ("dna", "rna", "agp")), embed(crops[:, ::-1].copy(), ("agp", "rna", "dna")),
                               atol=1e-5)


def test_a_file_that_does_not_fit_is_refused_naming_the_difference(camae, tmp_path):
    _, vit, positions, path = camae
    with pytest.raises(DinolocError, match="holds 96 patch positions, not a multiple of the 256 patches"):
        load_backbone("ca-mae-vits16", path, device="cpu")  # trained at 32 px / patch 8, backbone 256 px / 16
    rgb = VisionTransformer(img_size=SIZE, patch_size=PATCH, in_chans=3, embed_dim=DIM, depth=2, num_heads=2,
                            num_classes=0)
    state = {f"encoder.vit_backbone.{k}": v for k, v in rgb.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "rgb_mae.pth")
    register_backbone(BackboneSpec(
        name="ca-mae-tiny2", description="", paper="", source="file", arch=CA_MAE_ARCH, slots=CELL_PAINTING_SLOTS,
        normalization="instance", input_size=SIZE, patch_size=PATCH,
        arch_kwargs={"img_size": SIZE, "patch_size": PATCH, "embed_dim": DIM, "depth": 2, "num_heads": 2}))
    try:
        with pytest.raises(DinolocError, match="expects 1 input channels, the file has 3"):
            load_backbone("ca-mae-tiny2", tmp_path / "rgb_mae.pth", device="cpu")
    finally:
        del BACKBONES["ca-mae-tiny2"]


def test_all_stains_needs_a_channel_agnostic_backbone():
    fixed = load_backbone("random-tiny", device="cpu")
    with pytest.raises(DinolocError, match="channel-agnostic backbone"):
        EmbedSettings(strategy="all-stains").resolved(fixed)
    with pytest.raises(DinolocError, match="channel-agnostic backbone"):
        EmbedSettings(embedding="stain-means").resolved(fixed)
