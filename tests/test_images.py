"""Reading images: layouts, file kinds, scaling, and clear errors for bad input."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.files import hash_array
from napari_dinoloc.core.images import (
    CellImage,
    find_hpa_groups,
    load_cell_image,
    make_cell_image,
    read_image,
)
from napari_dinoloc.core.stains import RGB_SLOTS


def two_channel_uint16(seed: int = 0, shape=(2, 40, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(100, 4000, size=shape, dtype=np.uint16)


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


def test_cyx_tiff_keeps_channel_order(tmp_path):
    array = two_channel_uint16()
    tifffile.imwrite(tmp_path / "cyx.tif", array)
    image = load_cell_image(tmp_path / "cyx.tif", "nucleus=0,protein=1")
    assert image.shape == (40, 48) and image.stains == ("nucleus", "protein")
    assert image.name == "cyx"
    assert image.content_hash == hash_array(array)
    # The brightest pixel of the raw protein channel stays the brightest after scaling.
    assert np.unravel_index(image.data[1].argmax(), image.shape) == np.unravel_index(array[1].argmax(), image.shape)


def test_yxc_tiff_is_detected_by_the_small_last_axis(tmp_path):
    array = two_channel_uint16(shape=(40, 48, 2))
    tifffile.imwrite(tmp_path / "yxc.tif", array)
    raw = read_image(tmp_path / "yxc.tif")
    assert raw.array.shape == (2, 40, 48)
    np.testing.assert_array_equal(raw.array[1], array[..., 1])


def test_ome_tiff_z_stack_is_max_projected_with_a_note(tmp_path):
    stack = np.random.default_rng(1).integers(0, 5000, size=(5, 2, 32, 36), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.ome.tif", stack, ome=True, metadata={"axes": "ZCYX"})
    raw = read_image(tmp_path / "stack.ome.tif")
    assert raw.name == "stack"
    np.testing.assert_array_equal(raw.array, stack.max(axis=0))
    assert any("Z axis" in n and "maximum projection" in n and "5" in n for n in raw.notes)
    image = load_cell_image(tmp_path / "stack.ome.tif", ["protein", "nucleus"])
    assert image.notes == raw.notes


def test_4d_tiff_without_axes_needs_the_channel_axis(tmp_path):
    stack = np.random.default_rng(2).integers(1, 5000, size=(4, 2, 24, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "tcyx.tif", stack)
    with pytest.raises(DinolocError, match=r"(?s)\(4, 2, 24, 24\).*channel axis"):
        read_image(tmp_path / "tcyx.tif")
    raw = read_image(tmp_path / "tcyx.tif", channel_axis=1)
    np.testing.assert_array_equal(raw.array, stack.max(axis=0))
    assert any("maximum projection" in n for n in raw.notes)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_four_channel_tiff_keeps_all_channels(tmp_path, dtype):
    # tifffile stores a 4-channel CYX array as planar "RGBA": the 4th channel is data, not alpha.
    array = np.random.default_rng(5).integers(1, 250, size=(4, 20, 24)).astype(dtype)
    tifffile.imwrite(tmp_path / "four.tif", array)
    raw = read_image(tmp_path / "four.tif")
    np.testing.assert_array_equal(raw.array, array)
    assert raw.default_stains is None


def test_a_2d_image_is_one_channel(tmp_path):
    plane = two_channel_uint16()[0]
    tifffile.imwrite(tmp_path / "plane.tif", plane)
    image = load_cell_image(tmp_path / "plane.tif", ["nucleus"])
    assert image.data.shape == (1, 40, 48)


def test_a_3d_stack_of_many_planes_is_an_unknown_layout(tmp_path):
    tifffile.imwrite(tmp_path / "planes.tif", two_channel_uint16(shape=(12, 30, 30)))
    with pytest.raises(DinolocError, match="channel axis"):
        read_image(tmp_path / "planes.tif")


# ---------------------------------------------------------------------------------------------
# Data types and scaling
# ---------------------------------------------------------------------------------------------


def test_uint8_is_divided_by_255():
    array = np.zeros((2, 8, 8), np.uint8)
    array[0, 0, 0], array[1] = 51, 10
    array[1, 1, 1] = 255
    image = make_cell_image(array, ["nucleus", "protein"])
    assert image.data.dtype == np.float32
    assert image.data[0, 0, 0] == pytest.approx(0.2)
    assert image.data[1, 0, 0] == pytest.approx(10 / 255)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_uint16_and_float_are_scaled_per_channel_by_percentiles(dtype):
    rng = np.random.default_rng(3)
    array = np.stack([rng.uniform(100, 200, (64, 64)), rng.uniform(1000, 60000, (64, 64))]).astype(dtype)
    array[1, 0, 0] = array[1].max() * 50 if dtype == np.float32 else 65535  # a hot pixel
    image = make_cell_image(array, ["nucleus", "protein"])
    for channel in image.data:
        assert channel.min() == 0.0 and channel.max() == 1.0
        assert 0.3 < channel.mean() < 0.7  # the hot pixel did not darken the channel
    assert image.content_hash == hash_array(array)


def test_cell_image_accessors():
    image = make_cell_image(two_channel_uint16(), ["nucleus", "protein"], name="x")
    assert isinstance(image, CellImage) and image.n_channels == 2
    assert image.channel("microtubules") is None
    np.testing.assert_array_equal(image.channel("protein"), image.data[1])
    swapped = image.with_stains("protein=0,nucleus=1")
    assert swapped.stains == ("protein", "nucleus") and swapped.content_hash == image.content_hash


# ---------------------------------------------------------------------------------------------
# File kinds
# ---------------------------------------------------------------------------------------------


def write_hpa_files(folder, image_id="10_A1_1", shape=(30, 34)):
    rng = np.random.default_rng(4)
    planes = {}
    for colour in ("blue", "red", "yellow", "green"):
        planes[colour] = rng.integers(1, 255, size=shape, dtype=np.uint8)
        iio.imwrite(folder / f"{image_id}_{colour}.png", planes[colour])
    return planes


def test_hpa_per_stain_pngs_are_grouped_in_hpa_order(tmp_path):
    planes = write_hpa_files(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    groups = find_hpa_groups([tmp_path])
    assert [[p.name for p in g] for g in groups] == [
        ["10_A1_1_red.png", "10_A1_1_green.png", "10_A1_1_blue.png", "10_A1_1_yellow.png"]
    ]
    image = load_cell_image(groups[0])
    assert image.name == "10_A1_1"
    assert image.stains == ("microtubules", "protein", "nucleus", "er")
    np.testing.assert_allclose(image.channel("protein"), planes["green"] / 255, atol=1e-6)


def test_one_hpa_file_brings_its_sibling_stains(tmp_path):
    write_hpa_files(tmp_path)
    image = load_cell_image(tmp_path / "10_A1_1_blue.png")
    assert image.n_channels == 4 and image.stains[1] == "protein"
    assert any("HPA" in n for n in image.notes)


def test_a_list_of_files_gives_one_channel_per_file(tmp_path):
    array = two_channel_uint16()
    for i in range(2):
        tifffile.imwrite(tmp_path / f"c{i}.tif", array[i])
    image = load_cell_image([tmp_path / "c0.tif", tmp_path / "c1.tif"], "nucleus,protein")
    assert image.data.shape == (2, 40, 48)
    assert image.content_hash == hash_array(array)


def test_rgb_jpeg_is_a_composite_with_default_stains(tmp_path):
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[5:20, 5:20, 0], rgb[10:30, 10:30, 1], rgb[25:45, 25:45, 2] = 200, 150, 250
    iio.imwrite(tmp_path / "composite.jpg", rgb, quality=95)
    image = load_cell_image(tmp_path / "composite.jpg")
    assert image.stains == RGB_SLOTS
    assert image.channel("protein")[20, 20] > 0.4 and image.channel("protein")[40, 40] < 0.1
    assert image.channel("nucleus")[40, 40] > 0.8


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0], rgba[2:8, 2:8, 1], rgba[5:10, 5:10, 2], rgba[..., 3] = 30, 90, 200, 255
    iio.imwrite(tmp_path / "rgba.png", rgba)
    image = load_cell_image(tmp_path / "rgba.png")
    assert image.n_channels == 3
    assert any("Alpha" in n for n in image.notes)


def test_missing_stains_are_asked_for(tmp_path):
    tifffile.imwrite(tmp_path / "two.tif", two_channel_uint16())
    with pytest.raises(DinolocError, match="which channel is which stain.*protein=1,nucleus=0"):
        load_cell_image(tmp_path / "two.tif")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DinolocError, match="not found.*Check the path"):
        load_cell_image(tmp_path / "nope.tif", "protein")


def test_corrupt_files(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage" * 10)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    for name in ("broken.tif", "broken.png"):
        with pytest.raises(DinolocError, match="Cannot read.*corrupt"):
            read_image(tmp_path / name)


def test_nan_and_inf_are_refused():
    array = np.ones((2, 10, 10), np.float32)
    array[1, 3, 3] = np.nan
    with pytest.raises(DinolocError, match="NaN or infinite"):
        make_cell_image(array, ["nucleus", "protein"])
    array[1, 3, 3] = np.inf
    with pytest.raises(DinolocError, match="NaN or infinite"):
        make_cell_image(array, ["nucleus", "protein"])


def test_all_zero_image_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((2, 16, 16), np.uint16))
    with pytest.raises(DinolocError, match="empty.*every pixel is 0"):
        load_cell_image(tmp_path / "zero.tif", "nucleus=0,protein=1")


def test_all_zero_protein_channel_is_refused():
    array = two_channel_uint16()
    array[1] = 0
    with pytest.raises(DinolocError, match="protein channel \\(channel 1\\).*empty"):
        make_cell_image(array, ["nucleus", "protein"])


def test_stain_count_mismatch_is_refused():
    with pytest.raises(DinolocError, match="3 stain\\(s\\).*2 channel"):
        make_cell_image(two_channel_uint16(), ["nucleus", "protein", "er"])


def test_channel_axis_out_of_range(tmp_path):
    tifffile.imwrite(tmp_path / "cyx.tif", two_channel_uint16())
    with pytest.raises(DinolocError, match="Channel axis 5 does not exist.*\\(2, 40, 48\\)"):
        read_image(tmp_path / "cyx.tif", channel_axis=5)


def test_channel_files_of_different_sizes_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", two_channel_uint16()[0])
    tifffile.imwrite(tmp_path / "b.tif", two_channel_uint16(shape=(20, 20)))
    with pytest.raises(DinolocError, match="differ in size"):
        read_image([tmp_path / "a.tif", tmp_path / "b.tif"])


# ---------------------------------------------------------------------------------------------
# Real images (skipped without ../shared/data)
# ---------------------------------------------------------------------------------------------


def test_real_hpa_field_of_view(shared_data):
    groups = find_hpa_groups([shared_data / "hpa_fov_4ch"])
    assert len(groups) == 1 and len(groups[0]) == 4
    image = load_cell_image(groups[0])
    assert image.name == "57_F11_1" and image.shape == (1728, 1728)
    assert image.stains == ("microtubules", "protein", "nucleus", "er")
    assert 0.01 < image.channel("nucleus").mean() < 0.5


def test_real_opencell_uint16_tiff(shared_data):
    image = load_cell_image(shared_data / "opencell_nuclei" / "FOV_00007_RAW.tif", "nucleus")
    assert image.shape == (1024, 1024) and image.stains == ("nucleus",)
    assert image.data.max() == 1.0 and image.data.min() == 0.0


def test_real_hpa_composite_jpeg(shared_data):
    image = load_cell_image(shared_data / "hpa_composites" / "3-1-a.jpg")
    assert image.stains == RGB_SLOTS and image.shape == (820, 820)
    assert image.channel("protein").max() > 0.5
