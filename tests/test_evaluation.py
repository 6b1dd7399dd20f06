import json

import numpy as np
import pytest

from napari_dinoloc.core.errors import Cancelled, DinolocError
from napari_dinoloc.core.evaluation import (
    cross_validate,
    evaluate_predictions,
    low_shot_curve,
    plot_confusion,
    plot_low_shot,
)
from napari_dinoloc.core.progress import CancelToken

CURVE_KEYS = {"fraction", "requested", "train_cells", "train_cells_per_fold", "share", "macro_f1_mean", "macro_f1_std",
              "fold_macro_f1", "folds", "notes"}


def blobs(per_class, seed=0, dim=32, k=4, noise=1.0, sizes=None):
    """Gaussian blobs; ``noise`` sets how much the classes overlap. ``sizes`` gives per-class counts."""
    centres = np.random.default_rng(7).normal(size=(k, dim))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), sizes if sizes is not None else per_class)
    x = centres[y] + noise * rng.normal(size=(len(y), dim))
    return x.astype(np.float32), [f"c{i}" for i in y]


def test_cross_validation_scores_agree_with_the_confusion_matrix():
    from sklearn.metrics import f1_score

    x, y = blobs(0, noise=1.6, sizes=[25, 15, 20, 12])
    evaluation = cross_validate("knn", x, y, folds=4, seed=0)
    assert evaluation.n_cells == len(y) == evaluation.confusion.sum()
    assert evaluation.folds == 4 and len(evaluation.fold_macro_f1) == 4 and not evaluation.notes
    np.testing.assert_array_equal(evaluation.confusion.sum(axis=1), [25, 15, 20, 12])  # rows are true classes
    predicted = np.array(evaluation.class_names)[evaluation.out_of_fold]
    expected_f1 = f1_score(y, predicted, average=None, labels=list(evaluation.class_names))
    np.testing.assert_allclose([evaluation.per_class_f1[c] for c in evaluation.class_names], expected_f1)
    assert evaluation.macro_f1 == pytest.approx(np.mean(list(evaluation.per_class_f1.values())))
    assert 0.5 < evaluation.macro_f1 < 1  # noisy enough to make mistakes, separable enough to be useful
    for i, name in enumerate(evaluation.class_names):  # F1 from the matrix by hand
        tp, fp, fn = evaluation.confusion[i, i], evaluation.confusion[:, i].sum() - evaluation.confusion[i, i], \
            evaluation.confusion[i].sum() - evaluation.confusion[i, i]
        assert evaluation.per_class_f1[name] == pytest.approx(2 * tp / (2 * tp + fp + fn))


@pytest.mark.parametrize("kind, params", [("logistic", {}), ("mlp", {"epochs": 20})])
def test_cross_validation_of_trained_heads_on_separable_blobs(kind, params):
    x, y = blobs(12, noise=0.5)
    evaluation = cross_validate(kind, x, y, folds=3, **params)
    assert evaluation.macro_f1 > 0.9


def test_cross_validation_is_repeatable_and_seeded():
    x, y = blobs(10, noise=2.0)
    a, b = cross_validate("knn", x, y, seed=1), cross_validate("knn", x, y, seed=1)
    assert np.array_equal(a.confusion, b.confusion)


def test_folds_are_reduced_with_a_note_when_a_class_is_small():
    x, y = blobs(0, sizes=[10, 10, 3, 10])
    evaluation = cross_validate("knn", x, y, folds=5)
    assert evaluation.folds == 3
    assert "Folds reduced from 5 to 3" in evaluation.notes[0] and "'c2'" in evaluation.notes[0]
    assert "Folds reduced" in evaluation.format_table()


def test_cross_validation_errors():
    x, y = blobs(0, k=2, sizes=[6, 6])
    with pytest.raises(DinolocError, match="at least two classes"):
        cross_validate("knn", x[:6], y[:6])
    with pytest.raises(DinolocError, match="'c1' \\(1\\)"):
        cross_validate("knn", x[:7], y[:7])
    with pytest.raises(DinolocError, match="at least 2 folds"):
        cross_validate("knn", x, y, folds=1)
    with pytest.raises(DinolocError, match="no setting"):
        cross_validate("knn", x, y, epochs=3)


def test_progress_reaches_the_end_and_cancel_stops():
    x, y = blobs(6)
    calls = []
    cross_validate("knn", x, y, folds=3, progress=lambda done, total, what: calls.append((done, total, what)))
    assert calls[-1][0] == calls[-1][1] and "fold 3 of 3" in calls[-1][2]
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        cross_validate("knn", x, y, cancel=token)


def test_evaluate_predictions_matches_scikit_learn():
    from sklearn.metrics import confusion_matrix, f1_score

    names = ["a", "b", "c"]
    true = ["a", "a", "b", "b", "c", "c", "a"]
    predicted = ["a", "b", "b", "b", "a", "c", "a"]
    evaluation = evaluate_predictions(true, predicted, names)
    np.testing.assert_array_equal(evaluation.confusion, confusion_matrix(true, predicted, labels=names))
    assert evaluation.macro_f1 == pytest.approx(f1_score(true, predicted, average="macro"))
    assert evaluation.folds == 0 and evaluation.n_cells == 7
    with pytest.raises(DinolocError, match="'d'"):
        evaluate_predictions(["a", "d"], ["a", "a"], names)


def test_evaluation_reports_as_dict_and_table():
    x, y = blobs(8, noise=1.5)
    evaluation = cross_validate("knn", x, y, folds=4)
    data = json.loads(json.dumps(evaluation.to_dict()))
    assert data["confusion"] == evaluation.confusion.tolist() and data["class_names"] == ["c0", "c1", "c2", "c3"]
    assert data["macro_f1"] == pytest.approx(evaluation.macro_f1)
    table = evaluation.format_table()
    assert f"{evaluation.macro_f1:.3f}" in table and "4-fold" in table
    assert all(name in table for name in evaluation.class_names)


def test_low_shot_curve_rises_with_more_labels():
    x, y = blobs(30, noise=2.2)
    fractions = (0.05, 0.25, 1.0)
    curve = low_shot_curve("logistic", x, y, fractions=fractions, folds=3, seed=0)
    assert [row["fraction"] for row in curve] == list(fractions)
    assert all(set(row) == CURVE_KEYS for row in curve)
    assert curve[0]["train_cells"] == 4  # 5% of 20 training cells is 1 cell per class
    assert curve[-1]["train_cells"] == 80
    means = [row["macro_f1_mean"] for row in curve]
    assert all(later >= earlier - 0.03 for earlier, later in zip(means, means[1:]))
    assert means[-1] > means[0] + 0.1
    assert all(len(row["fold_macro_f1"]) == 3 and row["macro_f1_std"] >= 0 for row in curve)


def test_low_shot_points_count_the_cells_really_used(monkeypatch):
    from napari_dinoloc.core import evaluation

    fitted, real = [], evaluation.make_head

    def recording(kind, *args, **kwargs):  # every head the curve trains, and how many cells it saw
        head = real(kind, *args, **kwargs)
        fit = head.fit_encoded
        head.fit_encoded = lambda x, *a, **k: (fitted.append(len(x)), fit(x, *a, **k))[1]
        return head

    monkeypatch.setattr(evaluation, "make_head", recording)
    x, y = blobs(6)  # 3 folds: 4 training cells per class; 5%, 10% and 25% all round to 1 cell per class
    curve = low_shot_curve("knn", x, y, fractions=(0.05, 0.1, 0.25, 0.5, 1.0), folds=3)
    cells = [row["train_cells"] for row in curve]
    assert cells == [4, 8, 16] and len(set(cells)) == len(cells)  # one point per distinct training set
    assert [row["requested"] for row in curve] == [[0.05, 0.1, 0.25], [0.5], [1.0]]
    assert [row["share"] for row in curve] == [0.25, 0.5, 1.0]
    per_fold = [row["train_cells_per_fold"] for row in curve]
    assert fitted == [per_fold[point][fold] for fold in range(3) for point in range(3)]  # what each head saw


def test_report_header_says_the_folds_the_tables_used():
    from napari_dinoloc.core.workflows import reports

    x, y = blobs(0, sizes=[8, 3, 8, 8])  # class c1 has 3 cells: 5 folds asked, 3 used
    plan = reports.EvaluationPlan(x, y, None, "knn", 5)
    report = reports.evaluate(plan)
    evaluation = report.evaluations["frozen"]
    header = "\n".join(reports.header_lines(report, plan, "model"))
    assert evaluation.folds == 3 == reports.folds_used(report, plan) and {r["folds"] for r in report.curve} == {3}
    assert "3-fold cross-validation" in header and "reduced from 5 to 3" in header and "5-fold" not in header
    assert "3-fold cross-validated" in evaluation.format_table()


def test_low_shot_curve_rejects_bad_fractions():
    x, y = blobs(6)
    with pytest.raises(DinolocError, match="fractions"):
        low_shot_curve("knn", x, y, fractions=(0, 0.5))


def test_plots_are_written_atomically(tmp_path):
    x, y = blobs(6)
    evaluation = cross_validate("knn", x, y, folds=3)
    curve = low_shot_curve("knn", x, y, fractions=(0.25, 1.0), folds=3)
    for path in (plot_confusion(evaluation, tmp_path / "confusion.png"), plot_low_shot(curve, tmp_path / "curve.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "curve.png"]
    with pytest.raises(DinolocError, match="does not exist"):
        plot_confusion(evaluation, tmp_path / "missing" / "c.png")
