"""Channel strategies, checked on content: which stain lands in which slot, and what gets embedded."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_dinoloc.core.backbones import BACKBONES, load_backbone, normalize, register_backbone
from napari_dinoloc.core.embedding import Embedder, EmbedSettings
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.stains import HPA_SLOTS, RGB_SLOTS
from napari_dinoloc.core.strategies import STRATEGIES

PROTEIN_NUCLEUS = ("protein", "nucleus")


@pytest.fixture(scope="module")
def rgb_tiny():
    return load_backbone("random-tiny", device="cpu")


@pytest.fixture(scope="module")
def hpa_tiny():
    tiny = BACKBONES["random-tiny"]
    spec = replace(tiny, name="random-tiny-hpa", slots=HPA_SLOTS, normalization="self",
                   arch_kwargs={**tiny.arch_kwargs, "in_chans": 4})
    register_backbone(spec)
    try:
        yield load_backbone(spec.name, device="cpu")
    finally:
        del BACKBONES[spec.name]


@pytest.fixture
def crops():
    rng = np.random.default_rng(0)
    return rng.random((3, 2, 32, 32), dtype=np.float32)  # channels: protein, nucleus


def model_cls(backbone, inputs):
    with torch.inference_mode():
        return backbone.tokens(inputs)[:, 0].numpy()


def test_natural_puts_protein_in_hpa_slot_1_and_zeros_where_a_stain_is_missing(crops):
    x = torch.from_numpy(crops)
    (view,) = STRATEGIES["natural"].views(x, PROTEIN_NUCLEUS, HPA_SLOTS)
    assert view.shape == (3, 4, 32, 32)
    assert torch.equal(view[:, 1], x[:, 0])  # protein -> slot 1
    assert torch.equal(view[:, 2], x[:, 1])  # nucleus -> slot 2
    assert not view[:, 0].any() and not view[:, 3].any()  # microtubules, ER: absent -> zeros


def test_natural_on_an_rgb_model_uses_microtubules_protein_nucleus():
    x = torch.rand(2, 3, 8, 8)
    stains = ("nucleus", "microtubules", "protein")
    (view,) = STRATEGIES["natural"].views(x, stains, RGB_SLOTS)
    assert torch.equal(view[:, 0], x[:, 1]) and torch.equal(view[:, 1], x[:, 2]) and torch.equal(view[:, 2], x[:, 0])


def test_self_normalisation_keeps_a_zero_slot_at_zero(hpa_tiny, crops):
    (view,) = STRATEGIES["natural"].views(torch.from_numpy(crops), PROTEIN_NUCLEUS, HPA_SLOTS)
    normed = normalize(view, hpa_tiny.spec)
    assert not normed[:, 0].any() and not normed[:, 3].any()
    assert torch.allclose(normed[:, 1].mean(dim=(-2, -1)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(normed[:, 1].std(dim=(-2, -1), correction=0), torch.ones(3), atol=1e-4)


def test_natural_embedding_on_hpa_model_is_the_model_on_the_mapped_input(hpa_tiny, crops):
    got = Embedder(hpa_tiny, EmbedSettings(strategy="natural", precision="fp32")).embed_batch(crops, PROTEIN_NUCLEUS)
    manual = torch.zeros(3, 4, 32, 32)
    manual[:, 1], manual[:, 2] = torch.from_numpy(crops[:, 0]), torch.from_numpy(crops[:, 1])
    mean, std = manual.mean(dim=(-2, -1), keepdim=True), manual.std(dim=(-2, -1), correction=0, keepdim=True)
    expected = model_cls(hpa_tiny, (manual - mean) / (std + 1e-7))
    assert got.shape == (3, 64)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    swapped = Embedder(hpa_tiny, EmbedSettings(precision="fp32")).embed_batch(crops[:, ::-1], PROTEIN_NUCLEUS)
    assert np.abs(swapped - got).max() > 1e-3  # which stain goes where matters


def test_replicate_gives_one_part_per_stain_each_the_single_stain_embedding(rgb_tiny, crops):
    stains = ("nucleus", "protein")  # channel order differs from the view order (protein first)
    image_crops = crops[:, ::-1].copy()
    embedder = Embedder(rgb_tiny, EmbedSettings(strategy="replicate", precision="fp32"))
    got = embedder.embed_batch(image_crops, stains)
    assert got.shape == (3, 2 * 64) and embedder.output_dim(stains) == 128
    for part, channel in ((0, 1), (1, 0)):  # part 0: protein (channel 1), part 1: nucleus (channel 0)
        single = Embedder(rgb_tiny, EmbedSettings(strategy="replicate", precision="fp32")).embed_batch(
            image_crops[:, [channel]], (stains[channel],))
        np.testing.assert_allclose(got[:, part * 64:(part + 1) * 64], single, atol=1e-5)
        replicated = torch.from_numpy(image_crops[:, [channel]]).repeat(1, 3, 1, 1)
        np.testing.assert_allclose(single, model_cls(rgb_tiny, normalize(replicated, rgb_tiny.spec)), atol=1e-5)


def test_replicate_with_cls_mean_and_other_channels(rgb_tiny):
    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    stains = ("protein", "other", "nucleus")
    embedder = Embedder(rgb_tiny, EmbedSettings(strategy="replicate", embedding="cls+mean", precision="fp32"))
    assert embedder.embed_batch(x, stains).shape == (2, 2 * 2 * 64)  # 'other' is skipped
    assert STRATEGIES["replicate"].count_views(stains, RGB_SLOTS) == 2


def test_protein_only_fills_every_slot_with_the_protein(hpa_tiny, rgb_tiny, crops):
    x = torch.from_numpy(crops)
    (view,) = STRATEGIES["protein-only"].views(x, PROTEIN_NUCLEUS, HPA_SLOTS)
    assert view.shape == (3, 4, 32, 32)
    for slot in range(4):
        assert torch.equal(view[:, slot], x[:, 0])
    only = Embedder(rgb_tiny, EmbedSettings(strategy="protein-only", precision="fp32")).embed_batch(crops, PROTEIN_NUCLEUS)
    replicate = Embedder(rgb_tiny, EmbedSettings(strategy="replicate", precision="fp32")).embed_batch(crops, PROTEIN_NUCLEUS)
    np.testing.assert_allclose(only, replicate[:, :64], atol=1e-5)


def test_strategies_refuse_images_they_cannot_map():
    x = torch.rand(1, 2, 8, 8)
    with pytest.raises(DinolocError, match="protein channel"):
        STRATEGIES["protein-only"].views(x, ("nucleus", "other"), RGB_SLOTS)
    with pytest.raises(DinolocError, match="matches an input slot"):
        STRATEGIES["natural"].views(x, ("er", "other"), RGB_SLOTS)
    with pytest.raises(DinolocError, match="known stain"):
        STRATEGIES["replicate"].views(x, ("other", "other"), RGB_SLOTS)


def test_every_strategy_is_described_and_cites_its_paper():
    assert set(STRATEGIES) == {"natural", "replicate", "protein-only", "bag-of-channels", "all-stains"}
    for strategy in STRATEGIES.values():
        assert strategy.description and "arXiv" in strategy.paper
