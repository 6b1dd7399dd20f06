"""The npe2 reader: HPA per-stain files become one layer per stain (named, coloured, additive), crop
folders and stacks become image stacks with the crops' classes; anything else is left to napari."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_dinoloc._reader import get_reader

HPA_LAYERS = {"microtubules": "magenta", "protein": "green", "nucleus": "blue", "ER": "yellow"}


def read(path):
    reader = get_reader(path if isinstance(path, list) else str(path))
    assert reader is not None, f"the reader does not take {path}"
    return reader(path)


def write_hpa_field(folder: Path, image_id="10_A1_1", shape=(40, 50)) -> dict:
    """Four stain PNGs with different pixels; returns {colour: pixels}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    planes = {}
    for colour in ("red", "green", "blue", "yellow"):
        planes[colour] = rng.integers(0, 255, shape, dtype=np.uint8)
        iio.imwrite(folder / f"{image_id}_{colour}.png", planes[colour])
    return planes


def check_hpa_layers(layers, image_id, planes=None):
    assert [kind for _, _, kind in layers] == ["image"] * 4
    names = [meta["name"] for _, meta, _ in layers]
    assert names == [f"{image_id} {stain}" for stain in HPA_LAYERS]
    assert [meta["colormap"] for _, meta, _ in layers] == list(HPA_LAYERS.values())
    assert {meta["blending"] for _, meta, _ in layers} == {"additive"}
    assert {meta["metadata"]["dinoloc_image_name"] for _, meta, _ in layers} == {image_id}
    if planes is not None:
        for (data, _, _), colour in zip(layers, ("red", "green", "blue", "yellow")):
            assert np.array_equal(data, planes[colour])


def test_hpa_folder_and_files_give_a_layer_per_stain(tmp_path):
    planes = write_hpa_field(tmp_path / "field")
    check_hpa_layers(read(tmp_path / "field"), "10_A1_1", planes)
    files = sorted(str(p) for p in (tmp_path / "field").iterdir())  # napari's stack: all four at once
    check_hpa_layers(read(files), "10_A1_1", planes)
    (single,) = read(str(tmp_path / "field" / "10_A1_1_green.png"))  # dropped one by one: one layer each
    assert single[1]["name"] == "10_A1_1 protein" and single[1]["colormap"] == "green"
    assert np.array_equal(single[0], planes["green"])


def test_crop_folder_with_class_subfolders_gives_stacks_and_classes(tmp_path):
    rng = np.random.default_rng(1)
    sizes = {"golgi/a.npy": (20, 24), "golgi/b.npy": (16, 16), "nucleoli/c.npy": (24, 20)}
    crops = {}
    for name, (h, w) in sizes.items():
        (tmp_path / "crops" / name).parent.mkdir(parents=True, exist_ok=True)
        crops[name] = rng.integers(1, 255, (h, w, 2), dtype=np.uint8)  # (H, W, C) as crops are often saved
        np.save(tmp_path / "crops" / name, crops[name])
    layers = read(tmp_path / "crops")
    assert [meta["name"] for _, meta, _ in layers] == ["crops nucleus", "crops protein"]
    assert [meta["colormap"] for _, meta, _ in layers] == ["blue", "green"]
    assert {meta["blending"] for _, meta, _ in layers} == {"additive"}
    metadata = layers[0][1]["metadata"]
    assert metadata["dinoloc_crop_names"] == list(sizes)
    assert metadata["dinoloc_crop_classes"] == ["golgi", "golgi", "nucleoli"]
    assert metadata["dinoloc_class_names"] == ["golgi", "nucleoli"]
    protein = layers[1][0]
    assert protein.shape == (3, 24, 24)
    assert np.array_equal(protein[1, 4:20, 4:20], crops["golgi/b.npy"][..., 1])  # centred, padded with 0
    assert protein[1, :4].sum() == 0


def test_crop_stack_stays_on_disk(tmp_path):
    stack = np.random.default_rng(2).random((5, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    layers = read(tmp_path / "stack.npy")
    assert [meta["name"] for _, meta, _ in layers] == ["crops microtubules", "crops protein", "crops nucleus"]
    assert np.array_equal(layers[1][0], stack[:, 1]) and isinstance(layers[1][0], np.memmap)
    assert layers[0][1]["metadata"]["dinoloc_crop_names"][4] == "stack.npy#4"


def test_paths_it_does_not_handle_give_none(tmp_path):
    iio.imwrite(tmp_path / "field.png", np.zeros((700, 700), np.uint8))  # one plain image
    (tmp_path / "big").mkdir()
    iio.imwrite(tmp_path / "big" / "a.png", np.zeros((700, 700), np.uint8))  # fields, not crops
    np.save(tmp_path / "volume.npy", np.zeros((4, 8, 8)))
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not numpy")
    for path in ("field.png", "big", "volume.npy", "notes.csv", "empty", "broken.npy", "missing_red.png"):
        assert get_reader(str(tmp_path / path)) is None, path
    write_hpa_field(tmp_path / "hpa")
    assert get_reader([str(tmp_path / "hpa" / "10_A1_1_red.png"), str(tmp_path / "field.png")]) is None


def test_real_hpa_field_and_crops(shared_data):
    folder = shared_data / "hpa_fov_4ch"
    layers = read(folder)
    check_hpa_layers(layers, "57_F11_1")
    assert {layer[0].shape for layer in layers} == {(1728, 1728)}
    assert np.array_equal(layers[1][0], iio.imread(folder / "57_F11_1_green.png"))
    files = sorted(str(p) for p in folder.glob("57_F11_1_*.png"))
    check_hpa_layers(read(files), "57_F11_1")
    crops = read(folder / "cell_crops")
    assert [meta["name"] for _, meta, _ in crops] == [f"crops {stain}" for stain in HPA_LAYERS]
    assert crops[0][0].shape == (13, 224, 224)
    first = np.load(sorted((folder / "cell_crops").glob("*.npy"))[0])
    assert np.array_equal(crops[2][0][0], first[..., 2])  # (224, 224, 4) files: channel 2 is the nucleus


@pytest.mark.gui
def test_viewer_opens_a_folder_with_the_plugin(make_napari_viewer, tmp_path):
    write_hpa_field(tmp_path / "field")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "field"), plugin="napari-dinoloc")
    assert [layer.name for layer in viewer.layers] == [f"10_A1_1 {stain}" for stain in HPA_LAYERS]
    assert [layer.colormap.name for layer in viewer.layers] == list(HPA_LAYERS.values())
    assert {str(layer.blending) for layer in viewer.layers} == {"additive"}
    viewer.layers.clear()
    viewer.open(sorted(str(p) for p in (tmp_path / "field").iterdir()), plugin="napari-dinoloc")
    assert len(viewer.layers) == 4  # one file at a time: one layer each
    assert viewer.layers[-1].name == "10_A1_1 ER"
