"""Per-well and per-image profiles: medians, class fractions, counts and the correction on control wells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.screen import aggregate_profiles, correct_on_controls, sphere_on_controls
from napari_dinoloc.core.workflows.cell_outputs import controls_from


def hand_made():
    """Two plates, a control well (DMSO) and a treated well on each; two images (sites) in P1's treated well."""
    cells = [  # plate, well, image, compound, embedding x, predicted class
        ("P1", "A01", "P1_A01_s1", "DMSO", 0, "nucleus"), ("P1", "A01", "P1_A01_s1", "DMSO", 2, "nucleus"),
        ("P1", "A01", "P1_A01_s1", "DMSO", 10, "er"),
        ("P1", "A02", "P1_A02_s1", "drug", 4, "er"), ("P1", "A02", "P1_A02_s2", "drug", 6, "er"),
        ("P2", "A01", "P2_A01_s1", "DMSO", 1, "nucleus"), ("P2", "A01", "P2_A01_s1", "DMSO", 3, "er"),
        ("P2", "A01", "P2_A01_s1", "DMSO", 5, "er"),
        ("P2", "A02", "P2_A02_s1", "drug", 9, "nucleus"), ("P2", "A02", "P2_A02_s1", "drug", 11, ""),
        ("P2", "A02", "P2_A02_s1", "drug", 13, "nucleus"),
    ]
    table = pd.DataFrame(cells, columns=["plate", "well", "image", "compound", "x", "predicted_class"])
    table["label"] = table.groupby("image").cumcount() + 1
    table["prob_nucleus"] = (table["predicted_class"] == "nucleus").astype(float)
    table["prob_er"] = 1.0 - table["prob_nucleus"]
    x = table.pop("x").to_numpy(float)
    return table, np.column_stack([x, 10 * x])


def test_well_profiles_have_the_known_medians_fractions_and_counts():
    table, embeddings = hand_made()
    profiles = aggregate_profiles(table, embeddings, by=("plate", "well"))
    assert profiles[["plate", "well"]].values.tolist() == [["P1", "A01"], ["P1", "A02"], ["P2", "A01"], ["P2", "A02"]]
    assert profiles["cells"].tolist() == [3, 2, 3, 3]
    np.testing.assert_allclose(profiles["emb_000"], [2, 5, 3, 11])
    np.testing.assert_allclose(profiles["emb_001"], [20, 50, 30, 110])
    # Shares among the predicted cells, in the model's class order; the unpredicted cell is not counted.
    assert [c for c in profiles.columns if c.startswith("fraction_")] == ["fraction_nucleus", "fraction_er"]
    np.testing.assert_allclose(profiles["fraction_nucleus"], [2 / 3, 0, 1 / 3, 1])
    np.testing.assert_allclose(profiles["fraction_er"], [1 / 3, 1, 2 / 3, 0])
    # Constant within every well: carried; the image is not (P1 A02 has two sites).
    assert profiles["compound"].tolist() == ["DMSO", "drug", "DMSO", "drug"] and "image" not in profiles


def test_mean_profiles_and_image_profiles():
    table, embeddings = hand_made()
    means = aggregate_profiles(table, embeddings, by=("plate", "well"), method="mean")
    np.testing.assert_allclose(means["emb_000"], [4, 5, 3, 11])
    images = aggregate_profiles(table, embeddings, by="image")
    assert images["cells"].tolist() == [3, 1, 1, 3, 3] and images["plate"].tolist() == ["P1"] * 3 + ["P2"] * 2


def test_control_centring_puts_each_plates_controls_at_zero():
    table, embeddings = hand_made()
    controls = controls_from(table, "compound=DMSO")
    assert controls.sum() == 6
    profiles = aggregate_profiles(table, embeddings, by=("plate", "well"), controls=controls)
    assert profiles["control"].tolist() == [True, False, True, False]
    # One control well per plate: centred only (P1 controls at 2, P2 at 3).
    np.testing.assert_allclose(profiles["emb_000"], [0, 3, 0, 8])
    np.testing.assert_allclose(profiles.loc[profiles["control"], ["emb_000", "emb_001"]].mean(), 0)


def test_per_image_controls_are_centred_and_scaled_per_plate():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(40, 4)) * [1, 5, 0.1, 2] + [3, -1, 0, 7]
    plates = np.repeat(["P1", "P2"], 20)
    values[plates == "P2"] += 50  # a plate effect
    is_control = np.tile(np.arange(20) < 8, 2)
    corrected = correct_on_controls(values, is_control, plates)
    for plate in ("P1", "P2"):
        control = corrected[(plates == plate) & is_control]
        np.testing.assert_allclose(control.mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(control.std(axis=0), 1, atol=1e-12)
    centred = correct_on_controls(values, is_control, plates, scale=False)
    np.testing.assert_allclose(centred[~is_control], values[~is_control] - np.where(
        (plates == "P1")[~is_control, None], values[:8].mean(0), values[20:28].mean(0)))


def test_sphering_whitens_the_control_profiles():
    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(6, 6))
    table = pd.DataFrame({"image": [f"i{k:02d}" for k in range(60)], "label": 1,
                          "compound": ["DMSO"] * 30 + ["drug"] * 30})
    embeddings = rng.normal(size=(60, 6)) @ mixing  # correlated features
    profiles = aggregate_profiles(table, embeddings, by="image", controls=table["compound"] == "DMSO", sphere=True)
    components = profiles[[c for c in profiles.columns if c.startswith("pc_")]].to_numpy()
    assert components.shape == (60, 6) and not any(c.startswith("emb_") for c in profiles.columns)
    control = components[profiles["control"].to_numpy()]
    np.testing.assert_allclose(control.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(np.cov(control, rowvar=False), np.eye(6), atol=1e-9)


def test_sphering_leaves_out_components_the_controls_do_not_vary_in():
    values = np.zeros((5, 3))
    values[:, 0] = [1, 2, 3, 4, 5]  # the controls vary along one direction only
    assert sphere_on_controls(values, np.ones(5, bool)).shape == (5, 1)


def test_bad_requests_say_what_to_do():
    table, embeddings = hand_made()
    with pytest.raises(DinolocError, match="no column site"):
        aggregate_profiles(table, embeddings, by=("plate", "site"))
    with pytest.raises(DinolocError, match="median or mean"):
        aggregate_profiles(table, embeddings, method="mode")
    with pytest.raises(DinolocError, match="--controls"):
        aggregate_profiles(table, embeddings, sphere=True)
    with pytest.raises(DinolocError, match="No cell is a control"):
        aggregate_profiles(table, embeddings, controls=controls_from(table, "compound=PBS"))
    with pytest.raises(DinolocError, match="Plate P2 has no control"):
        aggregate_profiles(table, embeddings, controls=(table["plate"] == "P1") & (table["well"] == "A01"))
    with pytest.raises(DinolocError, match="COLUMN=VALUE"):
        controls_from(table, "DMSO")
    with pytest.raises(DinolocError, match="at least 3 control profiles"):
        aggregate_profiles(table, embeddings, controls=table["compound"] == "DMSO", sphere=True)


def test_categorical_columns_as_in_an_h5ad_give_the_same_profiles():
    table, embeddings = hand_made()
    text = ["plate", "well", "compound"]
    categorical = aggregate_profiles(table.astype(dict.fromkeys(text, "category")), embeddings)
    pd.testing.assert_frame_equal(categorical.astype(dict.fromkeys(text, object)), aggregate_profiles(table, embeddings))
