"""Issue 9: single-cell crops as input (a folder with class sub-folders, a stack file), and their bad-input messages."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_dinoloc.cli import main
from napari_dinoloc.core.batch import crop_jobs
from napari_dinoloc.core.crop_inputs import crop_image, crop_labels, list_crops
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.synthetic import make_field
from napari_dinoloc.core.table import read_table

TINY = ["--backbone", "random-tiny", "--input-size", "32", "--no-cache", "--channels", "nucleus=0,protein=1"]
CLASSES = ("nucleoli", "plasma_membrane")


def cell_crops(n_per_class=6, size=48):
    """(class, crop (2, size, size) uint16) cut around the ground-truth cells of synthetic fields."""
    out = []
    for seed in range(4):
        field = make_field(seed=seed, shape=(256, 256), classes=CLASSES)
        for label, cls in field.cell_class.items():
            ys, xs = np.nonzero(field.labels == label)
            cy, cx = int(ys.mean()), int(xs.mean())
            if size // 2 <= cy < 256 - size // 2 and size // 2 <= cx < 256 - size // 2:
                crop = field.image[:, cy - size // 2:cy + size // 2, cx - size // 2:cx + size // 2]
                out.append((cls, crop * (field.labels[cy - size // 2:cy + size // 2, cx - size // 2:cx + size // 2] == label)))
    return [c for cls in CLASSES for c in [x for x in out if x[0] == cls][:n_per_class]]


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    folder = root / "by_class"
    items = cell_crops()
    for i, (cls, crop) in enumerate(items):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / cls / f"cell_{i:03d}.tif", crop)
    stack = root / "stack.npy"
    np.save(stack, np.stack([crop for _, crop in items]))
    return folder, stack, items


def test_folder_classes_from_sub_folders(crops):
    folder, _, items = crops
    found = list_crops(folder)
    assert len(found) == len(items)
    assert {c.cls for c in found} == set(CLASSES)
    assert found[0].name.startswith(CLASSES[0] + "/cell_")


def test_cell_mask_whole_or_foreground(crops):
    folder, _, _ = crops
    image = crop_image(list_crops(folder)[0], ("nucleus", "protein"))
    assert crop_labels(image).all()
    foreground = crop_labels(image, "foreground")
    assert 0.05 < foreground.mean() < 0.95 and foreground.max() == 1


def test_folder_evaluated_trained_and_predicted_csv_names_each_crop(crops, tmp_path, capsys):
    folder, stack, items = crops
    code = main(["evaluate", str(folder), "--crops", "--annotations", str(folder), "--head", "knn", "--folds", "2", *TINY])
    assert code == 0
    out = capsys.readouterr().out
    assert "macro-F1: chosen features" in out
    model = tmp_path / "crops.dinoloc"
    assert main(["train", str(folder), "--crops", "--annotations", str(folder), "--head", "knn", "--out", str(model), *TINY]) == 0
    csv_path = tmp_path / "pred.csv"
    assert main(["predict", str(stack), "--crops", "--model", str(model), "--out", str(csv_path), "--no-cache",
                 "--channels", "nucleus=0,protein=1"]) == 0
    rows = read_table(csv_path)
    assert [r["image"] for r in rows] == [f"stack.npy#{i}" for i in range(len(items))]
    assert all(r["label"] == "1" for r in rows)
    correct = np.mean([r["predicted_class"] == cls for r, (cls, _) in zip(rows, items)])
    assert correct > 0.5
    folder_csv = tmp_path / "folder.csv"
    assert main(["predict", str(folder), "--crops", "--model", str(model), "--out", str(folder_csv), "--no-cache",
                 "--channels", "nucleus=0,protein=1", "--crop-mask", "foreground"]) == 0
    names = [r["image"] for r in read_table(folder_csv)]
    assert names == [c.name for c in list_crops(folder)] and names[0].endswith(".tif")


def test_stack_with_a_classes_csv(crops, tmp_path):
    _, stack, items = crops
    classes = tmp_path / "classes.csv"
    classes.write_text("file,class\n" + "".join(f"stack.npy#{i},{cls}\n" for i, (cls, _) in enumerate(items)))
    assert main(["evaluate", str(stack), "--crops", "--annotations", str(classes), "--head", "knn", "--folds", "2", *TINY]) == 0


def test_different_channel_counts_named(tmp_path):
    (tmp_path / "a").mkdir()
    tifffile.imwrite(tmp_path / "a" / "one.tif", np.ones((2, 16, 16), np.uint16))
    tifffile.imwrite(tmp_path / "a" / "two.tif", np.ones((3, 16, 16), np.uint16))
    with pytest.raises(DinolocError, match="different channel counts: a/one.tif has 2, a/two.tif has 3"):
        crop_jobs(tmp_path)


def test_empty_class_folder_named(tmp_path):
    (tmp_path / "golgi").mkdir()
    (tmp_path / "er").mkdir()
    tifffile.imwrite(tmp_path / "golgi" / "one.tif", np.ones((2, 16, 16), np.uint16))
    with pytest.raises(DinolocError, match="class folder 'er' .* holds no crop images"):
        list_crops(tmp_path)


def test_unreadable_crop_named(tmp_path, capsys):
    (tmp_path / "golgi").mkdir()
    (tmp_path / "golgi" / "broken.tif").write_bytes(b"not a tiff at all")
    code = main(["embed", str(tmp_path), "--crops", "--out", str(tmp_path / "e.npz"), *TINY])
    err = capsys.readouterr().err
    assert code != 0
    assert "Cannot read the crop golgi/broken.tif" in err and len(err.strip().splitlines()) == 1
