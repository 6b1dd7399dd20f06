"""Classic per-cell features: names, NaN-free with and without nuclei, what they measure, determinism,
usefulness for classification, and their use as a feature extractor beside the backbones."""

import numpy as np
import pytest

from napari_dinoloc.core.classic import ClassicFeatures, classic_features, combine, feature_names
from napari_dinoloc.core.embedding import Embeddings
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.evaluation import cross_validate
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.segmentation import CellTable
from napari_dinoloc.core.synthetic import make_field


def cells_of(field):
    return np.unique(field.labels)[1:]


@pytest.fixture(scope="module")
def measured(synthetic_field):
    image = make_cell_image(synthetic_field.image, synthetic_field.stains)
    cells = cells_of(synthetic_field)
    features, names = classic_features(image.data, image.stains, synthetic_field.labels, cells)
    return image, cells, features, names


def column(features, names, name):
    return features[:, names.index(name)]


def test_one_named_float_row_per_cell(measured):
    image, cells, features, names = measured
    assert features.shape == (len(cells), len(names)) and features.dtype == np.float32
    assert len(set(names)) == len(names) == len(feature_names(image.stains))
    for name in ("nucleus_mean", "protein_p90", "protein_integrated", "radial_centre_frac_ring1", "radial_border_frac_ring4",
                 "protein_nucleus_pearson", "protein_in_nucleus_fraction", "haralick_contrast_d1", "lbp_uniform_0",
                 "granularity_r2", "puncta_per_1000px", "area", "solidity", "nucleus_area_ratio", "has_nucleus"):
        assert name in names
    # a third stain adds its own intensity statistics
    three = feature_names(("microtubules", "protein", "nucleus"))
    assert "microtubules_mean" in three and len(three) == len(names) + len(names) - len(feature_names(("protein",)))


def test_area_and_fractions_are_measured_not_invented(measured, synthetic_field):
    _, cells, features, names = measured
    true_area = np.bincount(synthetic_field.labels.ravel())[cells]
    np.testing.assert_array_equal(column(features, names, "area"), true_area)
    rings = features[:, [names.index(f"radial_centre_frac_ring{k}") for k in range(1, 5)]]
    np.testing.assert_allclose(rings.sum(axis=1), 1.0, atol=1e-4)  # every cell's protein is in some ring
    border = features[:, [names.index(n) for n in ("protein_in_nucleus_fraction", *(f"radial_border_frac_ring{k}" for k in range(1, 5)))]]
    np.testing.assert_allclose(border.sum(axis=1), 1.0, atol=1e-4)  # nucleus + rings outside it = all
    lbp = features[:, [i for i, n in enumerate(names) if n.startswith("lbp_")]]
    np.testing.assert_allclose(lbp.sum(axis=1), 1.0, atol=1e-5)
    assert 0.9 < column(features, names, "solidity").min() and column(features, names, "solidity").max() <= 1.0


def test_given_nuclei_agree_with_the_ones_found_by_otsu(synthetic_field, measured):
    image, cells, found, names = measured
    given, _ = classic_features(image.data, image.stains, synthetic_field.labels, cells, nuclei=synthetic_field.nuclei)
    true_ratio = np.bincount(synthetic_field.nuclei.ravel(), minlength=cells.max() + 1)[cells] / column(given, names, "area")
    np.testing.assert_allclose(column(given, names, "nucleus_area_ratio"), true_ratio, rtol=1e-5)
    assert column(found, names, "has_nucleus").all()
    assert np.corrcoef(column(found, names, "nucleus_area_ratio"), true_ratio)[0, 1] > 0.9


def test_cells_without_nucleus_get_zeros_and_a_flag(synthetic_field):
    data = make_cell_image(synthetic_field.image, synthetic_field.stains).data.copy()
    cells = cells_of(synthetic_field)
    dark = cells[:5]
    data[0][np.isin(synthetic_field.labels, dark)] = 0.01  # no nucleus stain in these cells
    data[1][synthetic_field.labels == cells[5]] = 0.0  # and one cell without any protein
    features, names = classic_features(data, synthetic_field.stains, synthetic_field.labels, cells)
    assert np.isfinite(features).all()
    flag = column(features, names, "has_nucleus")
    assert flag[:5].tolist() == [0] * 5 and flag[6:].all()
    for name in ("nucleus_area_ratio", "protein_in_nucleus_fraction", "radial_border_frac_ring1", "radial_border_mean_r"):
        assert (column(features, names, name)[:5] == 0).all(), name
    # no nucleus stain at all: every cell is flagged, nothing is NaN
    other, names = classic_features(data, ("other", "protein"), synthetic_field.labels, cells)
    assert np.isfinite(other).all() and not column(other, names, "has_nucleus").any()
    assert (column(other, names, "protein_nucleus_pearson") == 0).all()


def test_radial_features_tell_nuclear_from_plasma_membrane_protein():
    field = make_field(seed=2, shape=(512, 512), classes=("nucleoplasm", "plasma_membrane"))
    image = make_cell_image(field.image, field.stains)
    cells = cells_of(field)
    features, names = classic_features(image.data, image.stains, field.labels, cells)
    nuclear = np.array([field.cell_class[c] == "nucleoplasm" for c in cells])
    assert 10 <= nuclear.sum() <= len(cells) - 10
    inner, outer = column(features, names, "radial_centre_frac_ring1"), column(features, names, "radial_centre_frac_ring4")
    assert inner[nuclear].mean() > 3 * inner[~nuclear].mean()
    assert outer[~nuclear].mean() > 3 * outer[nuclear].mean()
    assert inner[nuclear].min() > inner[~nuclear].max()  # not just on average: every cell
    in_nucleus = column(features, names, "protein_in_nucleus_fraction")
    assert in_nucleus[nuclear].mean() > 0.5 > 0.2 > in_nucleus[~nuclear].mean()


def test_deterministic_and_in_the_order_asked(measured, synthetic_field):
    image, cells, features, names = measured
    again, again_names = classic_features(image.data, image.stains, synthetic_field.labels, cells)
    np.testing.assert_array_equal(features, again)
    assert again_names == names
    reverse, _ = classic_features(image.data, image.stains, synthetic_field.labels, cells[::-1])
    np.testing.assert_array_equal(reverse, features[::-1])


def test_a_cell_not_in_the_labels_is_a_clear_error(measured, synthetic_field):
    image, cells, _, _ = measured
    with pytest.raises(DinolocError, match="not in the label image"):
        classic_features(image.data, image.stains, synthetic_field.labels, [int(cells.max()) + 7])
    with pytest.raises(DinolocError, match="protein"):
        classic_features(image.data, ("nucleus", "other"), synthetic_field.labels, cells)


def test_cross_validated_logistic_well_above_chance():
    field = make_field(seed=5, shape=(768, 768))
    image = make_cell_image(field.image, field.stains)
    cells = cells_of(field)
    features, _ = classic_features(image.data, image.stains, field.labels, cells)
    evaluation = cross_validate("logistic", features, [field.cell_class[c] for c in cells], folds=5)
    assert len(evaluation.class_names) == 10
    assert evaluation.macro_f1 > 0.7  # chance: 0.1


def test_classic_is_a_feature_extractor_like_the_backbones(synthetic_field, measured):
    image, cells, features, names = measured
    extractor = ClassicFeatures()
    assert extractor.name == "classic" and "radial" in extractor.describe()
    table = CellTable.from_labels(synthetic_field.labels)
    result = extractor.embed(image, synthetic_field.labels, table)
    assert isinstance(result, Embeddings)
    np.testing.assert_array_equal(result.labels, table.label)
    np.testing.assert_array_equal(result.vectors, features)
    assert result.signature["backbone"] == "classic" and result.signature["dim"] == len(names)
    assert result.signature["image_hash"] == image.content_hash and result.signature["feature_names"] == names


def test_combine_gives_each_block_the_same_weight(synthetic_field, measured):
    image, cells, features, _ = measured
    rng = np.random.default_rng(0)
    deep = rng.normal(0, 50, (len(cells), 384)).astype(np.float32)  # many dimensions, large scale
    joined = combine(deep, features)
    assert joined.shape == (len(cells), 384 + features.shape[1]) and joined.dtype == np.float32
    deep_part, classic_part = joined[:, :384], joined[:, 384:]
    assert deep_part.var(axis=0).sum() == pytest.approx(1.0, rel=1e-3)
    varying = features.std(axis=0) > 0
    assert classic_part.var(axis=0).sum() == pytest.approx(varying.sum() / features.shape[1], rel=1e-3)
    assert np.isfinite(joined).all()
    classic = ClassicFeatures().embed(image, synthetic_field.labels)
    deep_emb = Embeddings(classic.labels.copy(), deep, {"backbone": "random", "dim": 384})
    both = combine(deep_emb, classic)
    assert both.signature["backbone"] == "random+classic" and both.dim == 384 + features.shape[1]
    with pytest.raises(DinolocError, match="different cells"):
        combine(Embeddings(classic.labels[::-1].copy(), deep, {}), classic)
    with pytest.raises(DinolocError):
        combine(deep[:3], features)


def test_puncta_are_counted_on_vesicles_not_on_a_centrosome():
    field = make_field(seed=3, shape=(512, 512), classes=("centrosome", "vesicles"))
    image = make_cell_image(field.image, field.stains)
    cells = cells_of(field)
    features, names = classic_features(image.data, image.stains, field.labels, cells)
    vesicles = np.array([field.cell_class[c] == "vesicles" for c in cells])
    puncta = column(features, names, "puncta_per_1000px") * column(features, names, "area") / 1000  # per cell
    assert np.median(puncta[vesicles]) > 8 and np.median(puncta[~vesicles]) <= 3


def test_progress_is_reported_and_cancel_stops_the_work(measured, synthetic_field):
    from napari_dinoloc.core.errors import Cancelled
    from napari_dinoloc.core.progress import CancelToken

    image, cells, _, _ = measured
    seen = []
    classic_features(image.data, image.stains, synthetic_field.labels, cells, progress=lambda *a: seen.append(a))
    assert seen[0][:2] == (0, len(cells)) and seen[-1][:2] == (len(cells), len(cells))
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        classic_features(image.data, image.stains, synthetic_field.labels, cells, cancel=token)
