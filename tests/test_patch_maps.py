"""Patch feature maps: PCA colours of patch tokens, similar patches, and their placement on the image."""

import numpy as np
import pytest

from napari_dinoloc.core.backbones import load_backbone
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.patch_maps import (
    full_size, layer_placement, patch_foreground, patch_tokens, pca_colours, similarity_map,
)


@pytest.fixture(scope="module")
def field_patches(synthetic_field):
    image = make_cell_image(synthetic_field.image, synthetic_field.stains)
    backbone = load_backbone("random-tiny", device="cpu")
    patches = patch_tokens(image, backbone, synthetic_field.labels, patches_per_side=48)  # 8 px per patch
    return image, patches, synthetic_field


def test_nuclei_and_cytoplasm_get_clearly_different_colours(field_patches):
    image, patches, field = field_patches
    assert patches.grid == (48, 48) and patches.patch_pixels == (8.0, 8.0)
    colours = pca_colours(patches)
    assert colours.shape == (48, 48, 3) and colours.min() >= 0 and colours.max() <= 1
    in_nucleus = patch_foreground(field.nuclei > 0, patches.grid)
    in_cytoplasm = patch_foreground((field.labels > 0) & ~ _grown(field.nuclei > 0, 6), patches.grid)
    assert in_nucleus.sum() > 20 and in_cytoplasm.sum() > 20
    nucleus_mean, cytoplasm_mean = colours[in_nucleus].mean(0), colours[in_cytoplasm].mean(0)
    assert np.linalg.norm(nucleus_mean - cytoplasm_mean) > 0.3  # clearly different colours
    # and patch by patch: the nearer of the two mean colours tells most patches apart
    def nearer_is_own(own, other, patches_):
        return (np.linalg.norm(patches_ - own, axis=1) < np.linalg.norm(patches_ - other, axis=1)).mean()
    assert nearer_is_own(nucleus_mean, cytoplasm_mean, colours[in_nucleus]) > 0.8
    assert nearer_is_own(cytoplasm_mean, nucleus_mean, colours[in_cytoplasm]) > 0.8
    assert not colours[~patches.foreground].any()  # background patches are black


def test_similar_patches_to_a_nucleus_patch_are_nuclei(field_patches):
    _, patches, field = field_patches
    in_nucleus = patch_foreground(field.nuclei > 0, patches.grid)
    in_cytoplasm = patch_foreground((field.labels > 0) & ~ _grown(field.nuclei > 0, 6), patches.grid)
    row, col = np.argwhere(in_nucleus)[0]
    similarity = similarity_map(patches, (row * 8 + 4, col * 8 + 4))
    assert similarity[row, col] == pytest.approx(1.0, abs=1e-5)
    assert np.nanmean(similarity[in_nucleus]) > np.nanmean(similarity[in_cytoplasm]) + 0.1
    assert np.isnan(similarity[~patches.foreground]).all()
    with pytest.raises(DinolocError, match="outside the region"):
        similarity_map(patches, (-5, 10))


def test_maps_lie_on_the_image_pixels_they_come_from(field_patches):
    image, _, field = field_patches
    backbone = load_backbone("random-tiny", device="cpu")
    patches = patch_tokens(image, backbone, field.labels, region=(64, 32, 192, 288), patches_per_side=32)
    assert patches.region == (64, 32, 192, 288) and patches.patch_pixels == (8.0, 8.0)
    (sy, sx), (ty, tx) = layer_placement(patches)
    assert (sy, sx, ty, tx) == (8.0, 8.0, 64 + 3.5, 32 + 3.5)
    grid_map = np.arange(np.prod(patches.grid), dtype=np.float32).reshape(patches.grid)
    full = full_size(patches, grid_map, image.data.shape[1:], fill=-1)
    assert full.shape == image.data.shape[1:] and full[0, 0] == -1 and full[64, 32] == 0
    assert full[64 + 8, 32 + 17] == grid_map[1, 2] and full[191, 287] == grid_map[-1, -1]


def _grown(mask, pixels):
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=pixels)


def test_dinoloc_patchmap_writes_aligned_tiffs(tmp_path, capsys):
    import tifffile

    from napari_dinoloc.cli import main

    assert main(["sample", str(tmp_path), "--count", "1", "--size", "256"]) == 0
    field, labels = tmp_path / "field_000.tif", tmp_path / "field_000_labels.tif"
    common = [str(field), "--labels", str(labels), "--backbone", "random-tiny", "--channels", "nucleus=0,protein=1",
              "--patches", "32"]
    assert main(["patchmap", *common, "--out", str(tmp_path / "pca.tif")]) == 0
    pca = tifffile.imread(tmp_path / "pca.tif")
    cells = tifffile.imread(labels) > 0
    assert pca.shape == (3, 256, 256) and pca.dtype == np.uint8
    assert pca[:, cells].max() > 200 and pca[:, ~cells].mean() < pca[:, cells].mean()  # colour on cells, black off
    point = np.argwhere(cells)[len(np.argwhere(cells)) // 2]
    assert main(["patchmap", *common, "--out", str(tmp_path / "similar.tif"),
                 "--similar-to", f"{point[0]},{point[1]}"]) == 0
    similar = tifffile.imread(tmp_path / "similar.tif")
    assert similar.shape == (256, 256) and similar[point[0], point[1]] == pytest.approx(1.0, abs=1e-5)
    assert "32x32 patches of 8.0 px" in capsys.readouterr().out
    assert main(["patchmap", *common, "--out", str(tmp_path / "x.tif"), "--similar-to=-50,3"]) == 2


def test_the_classic_features_make_patch_maps_with_their_transformer():
    from napari_dinoloc.core import defaults
    from napari_dinoloc.core.classic.backbone import transformer_for

    assert transformer_for("classic") == defaults.BACKBONE
    assert transformer_for("dino-vits16+classic") == "dino-vits16"
    assert transformer_for("dinoloc-cells") == "dinoloc-cells"
