"""Bag of channels: each stain embedded alone, parts in a fixed role order, zeros for a missing role."""

from dataclasses import replace

import numpy as np
import pytest

from napari_dinoloc.core.backbones import BACKBONES, load_backbone, register_backbone
from napari_dinoloc.core.embedding import Embedder, EmbedSettings
from napari_dinoloc.core.stains import PROTEIN, STAIN_ROLES
from napari_dinoloc.core.strategies import STRATEGIES

CP_FIVE = ("dna", "rna", "er", "agp", "mito")


@pytest.fixture(scope="module")
def one_slot_tiny():
    tiny = BACKBONES["random-tiny"]
    spec = replace(tiny, name="random-tiny-1ch", slots=(PROTEIN,), normalization="self",
                   arch_kwargs={**tiny.arch_kwargs, "in_chans": 1})
    register_backbone(spec)
    try:
        yield load_backbone(spec.name, device="cpu")
    finally:
        del BACKBONES[spec.name]


def embed(backbone, crops, stains, strategy="bag-of-channels"):
    return Embedder(backbone, EmbedSettings(strategy=strategy, precision="fp32")).embed_batch(crops, stains)


@pytest.mark.parametrize("stains", [("nucleus", "protein"), CP_FIVE])
@pytest.mark.parametrize("model", ["one_slot", "rgb"])
def test_each_part_is_that_stain_alone_and_missing_roles_are_zero(one_slot_tiny, stains, model):
    backbone = one_slot_tiny if model == "one_slot" else load_backbone("random-tiny", device="cpu")
    rng = np.random.default_rng(1)
    crops = rng.random((3, len(stains), 32, 32), dtype=np.float32)
    vectors = embed(backbone, crops, stains)
    width = backbone.embed_dim
    assert vectors.shape == (3, len(STAIN_ROLES) * width)  # the same width for 2 and 5 stains
    role_of = {"dna": "nucleus"}
    filled = set()
    for channel, stain in enumerate(stains):
        role = STAIN_ROLES.index(role_of.get(stain, stain))
        alone = embed(backbone, crops[:, channel:channel + 1], (stain,))
        part = vectors[:, role * width:(role + 1) * width]
        np.testing.assert_allclose(part, alone[:, role * width:(role + 1) * width], atol=1e-5)
        assert np.abs(part).max() > 0.1  # a real embedding, not zeros
        filled.add(role)
        # the stain alone, through the model, equals the 'protein-only'-style single view of that stain
        single = embed(backbone, crops[:, channel:channel + 1], (PROTEIN,), strategy="protein-only")
        np.testing.assert_allclose(part, single, atol=1e-5)
    for role in set(range(len(STAIN_ROLES))) - filled:
        assert not vectors[:, role * width:(role + 1) * width].any()  # a role the image lacks: zeros


def test_the_order_is_fixed_by_role_not_by_channel(one_slot_tiny):
    rng = np.random.default_rng(2)
    crops = rng.random((2, 2, 32, 32), dtype=np.float32)
    forward = embed(one_slot_tiny, crops, ("protein", "nucleus"))
    swapped = embed(one_slot_tiny, crops[:, ::-1].copy(), ("nucleus", "protein"))
    np.testing.assert_allclose(forward, swapped, atol=1e-5)
    assert STRATEGIES["bag-of-channels"].count_views(("protein",), (PROTEIN,)) == len(STAIN_ROLES)
