"""Issue 9: the classic features chosen like a backbone, alone or joined to one; the training statistics travel in the bundle."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinoloc.cli import main
from napari_dinoloc.cli._parser import build_parser
from napari_dinoloc.core.bundle import backbone_for_bundle, bundle_for_head, load_bundle, save_bundle
from napari_dinoloc.core.classic import CLASSIC, ClassicBackbone, FeatureScaler, feature_choices, load_features
from napari_dinoloc.core.embedding import EmbedSettings, embed_cells
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.heads import train_head
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.synthetic import make_field

SETTINGS = EmbedSettings(input_size=32, device="cpu")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("samples")
    assert main(["sample", str(outdir), "--count", "2", "--size", "384"]) == 0
    return outdir


@pytest.fixture(scope="module")
def two_fields():
    return [make_field(seed=s, shape=(256, 256), n_cells=14) for s in (1, 2)]


def test_classic_is_a_choice_of_the_command_line():
    assert {"classic", "random+classic", "dinoloc-cells+classic"} <= set(feature_choices())
    args = build_parser().parse_args(["embed", "x.tif", "--backbone", "random+classic", "--out", "e.npz"])
    assert args.backbone == "random+classic"


def test_classic_alone_is_standardised_with_frozen_statistics(two_fields):
    first, second = two_fields
    features = load_features(CLASSIC)
    a = embed_cells(make_cell_image(first.image, first.stains), first.labels, features, SETTINGS)
    assert a.signature["backbone"] == "classic"
    np.testing.assert_allclose(a.vectors.mean(axis=0), 0, atol=1e-4)  # z-scored on the first image
    scaler = features.scaler
    b = embed_cells(make_cell_image(second.image, second.stains), second.labels, features, SETTINGS)
    assert features.scaler is scaler  # not refitted: the second image uses the first's statistics
    assert not np.allclose(b.vectors.mean(axis=0), 0, atol=1e-3)


def test_combined_has_both_blocks_each_weighted_alike(two_fields):
    field = two_fields[0]
    features = load_features("random-tiny+classic", device="cpu")
    assert isinstance(features, ClassicBackbone) and features.name == "random-tiny+classic"
    found = embed_cells(make_cell_image(field.image, field.stains), field.labels, features, SETTINGS)
    deep_dim, classic_dim = features.scaler.blocks
    assert found.dim == deep_dim + classic_dim and deep_dim > 0 and classic_dim > 0
    deep, classic = found.vectors[:, :deep_dim], found.vectors[:, deep_dim:]
    # each block's total variance is about 1 (columns that do not vary count 0)
    assert 0.5 < deep.var(axis=0).sum() <= 1.0001 and 0.5 < classic.var(axis=0).sum() <= 1.0001


def test_bundle_keeps_the_training_statistics(two_fields, tmp_path):
    first, second = two_fields
    features = load_features(CLASSIC)
    image = make_cell_image(first.image, first.stains)
    emb = embed_cells(image, first.labels, features, SETTINGS)
    classes = ["a" if first.cell_class[int(label)] < "m" else "b" for label in emb.labels]
    head = train_head("knn", emb.vectors, classes)
    path = save_bundle(bundle_for_head(head, features, image.stains, SETTINGS, classes), tmp_path / "m")
    bundle = load_bundle(path)
    restored = backbone_for_bundle(bundle)
    np.testing.assert_allclose(restored.scaler.mean, features.scaler.mean)
    again = embed_cells(make_cell_image(second.image, second.stains), second.labels, restored, SETTINGS)
    fresh = embed_cells(make_cell_image(second.image, second.stains), second.labels, features, SETTINGS)
    np.testing.assert_allclose(again.vectors, fresh.vectors, atol=1e-5)


def test_scaler_refuses_other_widths():
    scaler = FeatureScaler.fit(np.ones((4, 3)), [3])
    with pytest.raises(DinolocError, match="fitted on 3"):
        scaler.transform(np.ones((2, 5)))


def test_classic_cannot_be_fine_tuned(two_fields):
    from napari_dinoloc.core.finetune import finetune

    field = two_fields[0]
    with pytest.raises(DinolocError, match="cannot be fine-tuned"):
        finetune([(make_cell_image(field.image, field.stains), field.labels, {1: "a", 2: "b"})], load_features(CLASSIC))


def test_evaluate_shows_classic_next_to_the_chosen_features(samples, capsys):
    code = main(["evaluate", str(samples / "field_000.tif"), str(samples / "field_001.tif"), "--channels", "nucleus=0,protein=1",
                 "--labels", str(samples / "field_000_labels.tif"), str(samples / "field_001_labels.tif"),
                 "--annotations", str(samples / "cells.csv"), "--backbone", "random-tiny", "--input-size", "32",
                 "--head", "knn", "--folds", "2", "--no-cache"])
    assert code == 0
    out = capsys.readouterr().out
    assert "classic features + head (baseline, same folds)" in out
    assert "macro-F1: chosen features" in out and "classic features" in out
    assert "folds split by image (2 images)" in out
