"""The dinoloc command on sample files: outputs, and one clear message for each bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_dinoloc.cli import main
from napari_dinoloc.core import defaults
from napari_dinoloc.core.heads import HEADS
from napari_dinoloc.core.table import columns, read_table

TINY = ["--backbone", "random-tiny", "--crop-size", "64", "--channels", "nucleus=0,protein=1"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("samples")
    assert main(["sample", str(outdir), "--count", "2", "--size", "384"]) == 0
    return outdir


@pytest.fixture(scope="module")
def model(samples, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.dinoloc"
    code = main(["train", str(samples / "field_000.tif"), "--labels", str(samples / "field_000_labels.tif"),
                 "--annotations", str(samples / "cells.csv"), "--head", "logistic", "--out", str(path), *TINY])
    assert code == 0
    return path


def run_failing(args, capsys) -> str:
    """Run dinoloc, expect the user-error exit status and exactly one message, no traceback."""
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    messages = [line for line in err.splitlines() if line.startswith("dinoloc:")]
    assert len(messages) == 1 and messages[0].startswith("dinoloc: error: "), err
    return messages[0]


def test_sample_writes_images_labels_and_classes(samples):
    image = tifffile.imread(samples / "field_000.tif")
    labels = tifffile.imread(samples / "field_000_labels.tif")
    assert image.shape == (2, 384, 384) and image.dtype == np.uint16
    assert labels.shape == (384, 384) and labels.max() >= 5
    rows = read_table(samples / "cells.csv")
    assert {r["image"] for r in rows} == {"field_000", "field_001"}
    assert len([r for r in rows if r["image"] == "field_000"]) == labels.max()


def test_predict_writes_one_row_per_cell_with_documented_columns(samples, model, tmp_path):
    out = tmp_path / "predictions.csv"
    code = main(["predict", str(samples / "field_001.tif"), "--labels", str(samples / "field_001_labels.tif"),
                 "--model", str(model), "--out", str(out), *TINY])
    assert code == 0
    rows = read_table(out)
    labels = tifffile.imread(samples / "field_001_labels.tif")
    assert [int(r["label"]) for r in rows] == list(range(1, labels.max() + 1))
    class_names = [c[len("prob_"):] for c in rows[0] if c.startswith("prob_")]
    assert list(rows[0]) == columns(class_names)
    for row in rows:
        probabilities = [float(row[f"prob_{c}"]) for c in class_names]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert row["predicted_class"] == class_names[int(np.argmax(probabilities))]
        assert row["backbone"] == "random-tiny" and row["strategy"] == "natural"


def test_predict_with_knn_on_annotations_streams_several_images(samples, tmp_path):
    out = tmp_path / "p.csv"
    code = main(["predict", str(samples / "field_000.tif"), str(samples / "field_001.tif"),
                 "--labels", str(samples / "field_000_labels.tif"), str(samples / "field_001_labels.tif"),
                 "--annotations", str(samples / "cells.csv"), "--head", "knn", "--out", str(out), *TINY])
    assert code == 0
    rows = read_table(out)
    assert {r["image"] for r in rows} == {"field_000", "field_001"}


def test_predict_a_folder_writes_the_per_image_summary_beside_the_cells(samples, model, tmp_path):
    from napari_dinoloc.core.image_summary import summary_columns

    out = tmp_path / "cells.csv"
    assert main(["predict", str(samples), "--model", str(model), "--out", str(out), *TINY]) == 0  # a folder
    cells = read_table(out)
    images = sorted({r["image"] for r in cells})
    assert images == sorted(p.stem for p in samples.glob("field_*.tif") if not p.stem.endswith("_labels"))
    summary = read_table(tmp_path / "cells_per_image.csv")
    class_names = [c[len("prob_"):] for c in cells[0] if c.startswith("prob_")]
    assert list(summary[0]) == summary_columns(class_names)
    assert sorted(r["image"] for r in summary) == images
    for row in summary:
        mine = [r for r in cells if r["image"] == row["image"]]
        assert int(row["cells"]) == len(mine)
        for name in class_names:
            assert int(row[f"n_{name}"]) == sum(r["predicted_class"] == name for r in mine)
        assert sum(float(row[f"fraction_{name}"]) for name in class_names) == pytest.approx(1, abs=1e-5)


def test_segment_writes_label_images(samples, tmp_path):
    code = main(["segment", str(samples / "field_000.tif"), "--channels", "nucleus=0,protein=1", "--out-dir", str(tmp_path),
                 "--keep-border-cells"])  # compared with every ground-truth cell
    assert code == 0
    labels = tifffile.imread(tmp_path / "field_000_cells.tif")
    truth = tifffile.imread(samples / "field_000_labels.tif")
    assert abs(int(labels.max()) - int(truth.max())) <= max(2, truth.max() // 10)


def test_embed_writes_vectors_for_every_cell(samples, tmp_path):
    from napari_dinoloc.core.embedding_files import load_embeddings

    out = tmp_path / "e.npz"
    assert main(["embed", str(samples / "field_000.tif"), "--labels", str(samples / "field_000_labels.tif"), "--out", str(out), *TINY]) == 0
    data = load_embeddings(out)
    assert data["vectors"].shape[0] == tifffile.imread(samples / "field_000_labels.tif").max()
    assert np.isfinite(data["vectors"]).all()


# ---- bad input: one clear message, nothing written ------------------------------------------
def test_unknown_channel_layout(tmp_path, capsys):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(1, 1000, (3, 4, 64, 64)).astype(np.uint16))
    err = run_failing(["segment", str(path), "--channels", "nucleus=0,protein=1", "--out-dir", str(tmp_path)], capsys)
    assert "channel" in err.lower() and "axis" in err.lower()
    assert not (tmp_path / "odd_cells.tif").exists()


@pytest.mark.parametrize("kind", ["nan", "zero"])
def test_nan_and_all_zero_images(tmp_path, capsys, kind):
    image = np.zeros((2, 64, 64), np.float32)
    if kind == "nan":
        image[:] = 1
        image[0, 3, 3] = np.nan
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, image)
    err = run_failing(["segment", str(path), "--channels", "nucleus=0,protein=1", "--out-dir", str(tmp_path)], capsys)
    assert ("NaN" in err or "not a number" in err.lower()) if kind == "nan" else "every pixel is 0" in err
    assert not (tmp_path / "bad_cells.tif").exists()


def test_image_without_cells(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "empty.tif"
    tifffile.imwrite(path, (rng.normal(100, 2, (2, 128, 128))).astype(np.uint16))
    err = run_failing(["segment", str(path), "--channels", "nucleus=0,protein=1", "--out-dir", str(tmp_path)], capsys)
    assert "cell" in err.lower()


def test_corrupt_checkpoint(samples, tmp_path, capsys):
    weights = tmp_path / "broken.pth"
    weights.write_bytes(b"not a checkpoint at all" * 10)
    out = tmp_path / "e.npz"
    err = run_failing(["embed", str(samples / "field_000.tif"), "--labels", str(samples / "field_000_labels.tif"),
                       "--backbone", "checkpoint", "--weights", str(weights), "--channels", "nucleus=0,protein=1", "--out", str(out)], capsys)
    assert "broken.pth" in err
    assert not out.exists()


def test_mismatched_checkpoint(samples, tmp_path, capsys):
    import timm
    import torch

    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, in_chans=3, depth=1)
    weights = tmp_path / "three_channels.pth"
    torch.save(model.state_dict(), weights)
    err = run_failing(["embed", str(samples / "field_000.tif"), "--labels", str(samples / "field_000_labels.tif"),
                       "--backbone", "hpa-dino-vits16", "--weights", str(weights), "--channels", "nucleus=0,protein=1",
                       "--out", str(tmp_path / "e.npz")], capsys)
    assert "3" in err and "4" in err


def test_label_image_of_wrong_shape(samples, tmp_path, capsys):
    labels = tmp_path / "small.tif"
    tifffile.imwrite(labels, np.ones((100, 100), np.int32))
    err = run_failing(["embed", str(samples / "field_000.tif"), "--labels", str(labels), "--out", str(tmp_path / "e.npz"), *TINY], capsys)
    assert "100" in err and "384" in err


def test_unwritable_output_path(samples, model, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "p.csv"  # a missing folder is created (issue 10, item 12); a file in the way is not
    err = run_failing(["predict", str(samples / "field_001.tif"), "--model", str(model), "--out", str(out), *TINY], capsys)
    assert "a-file" in err
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_head_trained_on_a_single_class(samples, tmp_path, capsys):
    annotations = tmp_path / "one.csv"
    annotations.write_text("image,label,class\nfield_000,1,nucleoli\nfield_000,2,nucleoli\nfield_000,3,nucleoli\n")
    out = tmp_path / "m.dinoloc"
    err = run_failing(["train", str(samples / "field_000.tif"), "--labels", str(samples / "field_000_labels.tif"),
                       "--annotations", str(annotations), "--out", str(out), *TINY], capsys)
    assert "two classes" in err or "2 classes" in err
    assert not out.exists()


def test_command_line_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "napari_dinoloc.cli", "backbones"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "random-tiny" in result.stdout and "natural" in result.stdout


def test_evaluate_reports_table_low_shot_curve_and_pictures(samples, tmp_path, capsys):
    code = main(["evaluate", str(samples / "field_000.tif"), str(samples / "field_001.tif"),
                 "--labels", str(samples / "field_000_labels.tif"), str(samples / "field_001_labels.tif"),
                 "--annotations", str(samples / "cells.csv"), "--folds", "2", "--fractions", "0.5", "1",
                 "--out-dir", str(tmp_path), *TINY])
    out = capsys.readouterr().out
    assert code == 0
    assert "macro" in out.lower() and "fraction 0.500" in out and "fraction 1.000" in out
    assert (tmp_path / "report.json").is_file()
    assert (tmp_path / "confusion_frozen.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "low_shot.png").read_bytes()[:4] == b"\x89PNG"


def test_finetuned_bundle_predicts_the_other_image(samples, tmp_path):
    bundle = tmp_path / "tuned.dinoloc"
    both = [str(samples / "field_000.tif"), str(samples / "field_001.tif"),
            "--labels", str(samples / "field_000_labels.tif"), str(samples / "field_001_labels.tif")]
    assert main(["finetune", *both, "--annotations", str(samples / "cells.csv"), "--epochs", "2", "--out", str(bundle), *TINY]) == 0
    out = tmp_path / "p.csv"
    assert main(["predict", *both, "--model", str(bundle), "--out", str(out), *TINY]) == 0
    rows = read_table(out)
    assert len(rows) == sum(int(tifffile.imread(samples / f"field_00{i}_labels.tif").max()) for i in (0, 1))
    assert all(r["weights_hash"].startswith("finetuned:") for r in rows)


def test_help_shows_the_defaults_and_registry_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at hyphens: "dinoloc-" / "cells" on a narrow terminal
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {HEADS.default})" in text and f"(default: {defaults.FEATURES})" in text
    assert "{natural,replicate,protein-only,bag-of-channels,all-stains}" in text
    with pytest.raises(SystemExit) as exit_:
        main(["train", "x.tif", "--annotations", "a.csv", "--out", "m.dinoloc", "--head", "forest"])
    assert exit_.value.code == 2 and "invalid choice: 'forest'" in capsys.readouterr().err


def test_segment_drops_border_cells_and_says_how_many(samples, tmp_path, capsys):
    code = main(["segment", str(samples / "field_000.tif"), "--channels", "nucleus=0,protein=1", "--out-dir", str(tmp_path),
                 "--nucleus-diameter", "auto", "--cell-stain", "none"])
    assert code == 0
    labels = tifffile.imread(tmp_path / "field_000_cells.tif")
    assert not np.any(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    err = capsys.readouterr().err
    assert "touching the image border dropped" in err and "nucleus diameter measured" in err
