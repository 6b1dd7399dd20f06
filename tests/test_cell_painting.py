"""Cell Painting: stain names, per-channel files grouped by site, the JUMP numbering trap, embedding."""

from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch

from napari_dinoloc.core.backbones import BACKBONES, load_backbone, register_backbone
from napari_dinoloc.core.embedding import EmbedSettings, embed_field
from napari_dinoloc.core.images import find_cell_painting_groups, load_cell_image, make_cell_image
from napari_dinoloc.core.stains import CELL_PAINTING_SLOTS, NUCLEUS, OTHER, STAIN_ROLES, parse_channel_spec
from napari_dinoloc.core.strategies import STRATEGIES


@pytest.fixture(scope="module")
def five_slot_tiny():
    tiny = BACKBONES["random-tiny"]
    spec = replace(tiny, name="random-tiny-cp", slots=CELL_PAINTING_SLOTS, normalization="self",
                   arch_kwargs={**tiny.arch_kwargs, "in_chans": 5})
    register_backbone(spec)
    try:
        yield load_backbone(spec.name, device="cpu")
    finally:
        del BACKBONES[spec.name]


def test_stain_names_and_the_nucleus_role():
    assert parse_channel_spec("dna=0,rna=1,er=2,agp=3,mito=4", 5) == CELL_PAINTING_SLOTS
    image = make_cell_image(np.random.default_rng(0).random((2, 16, 16), dtype=np.float32), ("mito", "dna"))
    assert image.channel(NUCLEUS) is not None and np.array_equal(image.channel(NUCLEUS), image.data[1])
    assert parse_channel_spec("protein=1,nucleus=0", 2) == ("nucleus", "protein")  # old names still work


def test_jump_files_are_grouped_by_site_and_named_by_channel_number(tmp_path):
    rng = np.random.default_rng(0)
    for channel in (1, 2, 3, 4, 5):  # JUMP numbering: ch1 Mito ... ch5 DNA; sparse bright spots (fluorescence)
        spots = (rng.random((24, 24)) > 0.8) * rng.random((24, 24)) * 1000 * channel
        tifffile.imwrite(tmp_path / f"r02c03f01p01-ch{channel}sk1fk1fl1.tiff", (spots + 100).astype(np.uint16))
    (group,) = find_cell_painting_groups([tmp_path])
    assert [p.name[13:16] for p in group] == ["ch5", "ch3", "ch4", "ch2", "ch1"]  # DNA, RNA, ER, AGP, Mito
    image = load_cell_image(tmp_path / "r02c03f01p01-ch2sk1fk1fl1.tiff")
    assert image.stains == CELL_PAINTING_SLOTS and image.name == "r02c03f01p01"
    ch5 = tifffile.imread(tmp_path / "r02c03f01p01-ch5sk1fk1fl1.tiff")
    assert np.corrcoef(image.data[0].ravel(), ch5.ravel())[0, 1] > 0.99  # DNA is ch5, not ch1
    assert any("ch5 DNA" in note for note in image.notes)


def test_a_five_slot_model_gets_the_stains_in_its_slot_order():
    x = torch.rand(2, 5, 8, 8)
    stains = ("mito", "agp", "rna", "er", "dna")  # file-number order
    (view,) = STRATEGIES["natural"].views(x, stains, CELL_PAINTING_SLOTS)
    for slot, stain in enumerate(CELL_PAINTING_SLOTS):
        assert torch.equal(view[:, slot], x[:, stains.index(stain)])


EXPECTED = {  # what each folder holds, named
    "jump_BR00117006": ("dna", "rna", "agp"),
    "pediatric_BR00143976": ("dna", "rna", "er", "agp", OTHER, OTHER),  # ch1 is bright field here, not Mito
    "nf1_plate2/Plate_2_images": ("dna", "er", "agp"),
}


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_real_cell_painting_sites_load_named_and_embed(shared_data, five_slot_tiny, folder):
    groups = find_cell_painting_groups([shared_data / "cellpainting" / folder])
    assert groups
    image = load_cell_image(groups[0])
    assert image.stains == EXPECTED[folder]
    named = [s for s in image.stains if s != OTHER]
    assert image.channel(NUCLEUS) is not None  # DNA serves as the nucleus stain for segmentation
    y, x = (np.array(image.data.shape[1:]) - 256) // 2
    crop = make_cell_image(image.data[:, y:y + 256, x:x + 256], image.stains, image.name)
    natural = embed_field(crop, five_slot_tiny, EmbedSettings(strategy="natural", precision="fp32"), tile_size=128)
    assert natural.vectors.shape == (1, five_slot_tiny.embed_dim) and np.isfinite(natural.vectors).all()
    bag = embed_field(crop, five_slot_tiny, EmbedSettings(strategy="bag-of-channels", precision="fp32"), tile_size=128)
    width = five_slot_tiny.embed_dim
    parts = bag.vectors.reshape(len(STAIN_ROLES), width)
    roles = {"dna": "nucleus"}
    present = {STAIN_ROLES.index(roles.get(s, s)) for s in named}
    assert all(np.abs(parts[i]).max() > 0 for i in present)
    assert not parts[[i for i in range(len(STAIN_ROLES)) if i not in present]].any()


def test_a_bright_field_channel_is_not_named_as_a_dye(tmp_path):
    rng = np.random.default_rng(3)
    spots = ((rng.random((32, 32)) > 0.8) * 3000 + 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "r01c01f01p01-ch5sk1fk1fl1.tiff", spots)  # DNA: dark background, bright nuclei
    bright_field = (11000 + rng.normal(0, 300, (32, 32))).astype(np.uint16)  # bright background everywhere
    tifffile.imwrite(tmp_path / "r01c01f01p01-ch1sk1fk1fl1.tiff", bright_field)
    image = load_cell_image(tmp_path / "r01c01f01p01-ch5sk1fk1fl1.tiff")
    assert image.stains == ("dna", OTHER)
    assert any("looks like bright field" in note and "MITO" in note for note in image.notes)
