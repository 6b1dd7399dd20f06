import json

import numpy as np
import pytest

from napari_dinoloc.core.errors import Cancelled, DinolocError
from napari_dinoloc.core.heads import HEADS, Predictions, head_from_state, train_head
from napari_dinoloc.core.progress import CancelToken

FAST_MLP = {"epochs": 30}  # keeps repeated MLP trainings quick; the default is checked once below


def blobs(per_class: int, seed: int, dim: int = 64, k: int = 4, spread: float = 1.0):
    """Gaussian blobs around fixed class centres (the same centres for every seed)."""
    centres = np.random.default_rng(123).normal(size=(k, dim)) * 0.6
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), dim)) / np.sqrt(dim) * 3
    return x.astype(np.float32), np.array([f"class{i}" for i in y])


def macro_f1(true, predicted):
    from sklearn.metrics import f1_score

    return f1_score(true, predicted, average="macro")


@pytest.fixture(scope="module")
def train_test():
    return blobs(30, seed=1), blobs(40, seed=2)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_each_head_learns_separable_blobs(kind, train_test):
    (x, y), (x_test, y_test) = train_test
    head = train_head(kind, x, y)
    predictions = head.predict(x_test, labels=np.arange(10, 10 + len(x_test)))
    assert macro_f1(y_test, predictions.predicted_names) > 0.9
    assert predictions.probabilities.dtype == np.float32
    assert predictions.probabilities.shape == (len(x_test), 4)
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1, atol=1e-5)
    assert (predictions.probabilities >= 0).all()
    assert predictions.labels[0] == 10


def test_knn_probabilities_match_hand_computation():
    x = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    classes = ["a", "a", "b", "b"]
    head = train_head("knn", x * 5, classes, k=3)  # scale must not matter: features are L2-normalised
    query = np.array([[0.6, 0.8]], dtype=np.float32)
    sims = {0: 0.6, 1: 0.8 * 0.6 + 0.6 * 0.8, 2: 0.8, 3: -0.6}  # cosine similarities to the query
    nearest = [1, 2, 0]  # top 3 by similarity; cell 3 is left out
    weight = {i: np.exp(sims[i] / 0.07) for i in nearest}
    expected_a = (weight[0] + weight[1]) / sum(weight.values())
    np.testing.assert_allclose(head.predict_proba(query)[0], [expected_a, 1 - expected_a], rtol=1e-5)


def test_knn_k_is_capped_by_training_size():
    head = train_head("knn", np.eye(4, dtype=np.float32), ["a", "a", "b", "b"], k=50)
    assert head.predict_proba(np.eye(4, dtype=np.float32)).shape == (4, 2)


@pytest.mark.parametrize("kind, params", [("logistic", {}), ("mlp", FAST_MLP)])
def test_seeded_training_repeats_exactly(kind, params, train_test):
    (x, y), (x_test, _) = train_test
    first = train_head(kind, x, y, seed=3, **params).predict_proba(x_test)
    again = train_head(kind, x, y, seed=3, **params).predict_proba(x_test)
    assert np.array_equal(first, again)


def test_mlp_seed_changes_the_model_but_not_the_callers_rng(train_test):
    import torch

    (x, y), (x_test, _) = train_test
    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    a = train_head("mlp", x, y, seed=0, **FAST_MLP).predict_proba(x_test)
    b = train_head("mlp", x, y, seed=1, **FAST_MLP).predict_proba(x_test)
    assert not np.array_equal(a, b)
    assert torch.equal(before, torch.random.get_rng_state())
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("kind, params", [("knn", {"k": 5}), ("logistic", {"C": 0.5}), ("mlp", FAST_MLP)])
def test_state_round_trip_gives_identical_probabilities(kind, params, train_test):
    (x, y), (x_test, _) = train_test
    head = train_head(kind, x, y, **params)
    tensors, config = head.to_state()
    config = json.loads(json.dumps(config))  # the config must survive JSON (it goes into the bundle)
    restored = head_from_state({k: v.copy() for k, v in tensors.items()}, config)
    assert type(restored) is type(head) and restored.params == head.params
    assert restored.class_names == head.class_names and restored.input_dim == 64
    assert np.array_equal(restored.predict_proba(x_test), head.predict_proba(x_test))


def test_logistic_matches_scikit_learn(train_test):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    (x, y), (x_test, _) = train_test
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=0.3, class_weight="balanced", max_iter=5000, tol=1e-10).fit(scaler.transform(x), y)
    ours = train_head("logistic", x, y, C=0.3)
    np.testing.assert_allclose(ours.predict_proba(x_test), reference.predict_proba(scaler.transform(x_test)), atol=2e-3)


def test_class_order_is_sorted_unless_given(train_test):
    (x, y), _ = train_test
    assert train_head("knn", x, y).class_names == ("class0", "class1", "class2", "class3")
    order = ("class3", "class1", "class0", "class2")
    head = train_head("knn", x, y, class_names=order)
    assert head.class_names == order
    probabilities = head.predict_proba(x[y == "class3"])
    assert (probabilities.argmax(axis=1) == 0).mean() > 0.9


def test_predictions_summaries():
    p = Predictions(labels=np.array([5, 7]), class_names=("a", "b", "c"),
                    probabilities=np.array([[0.7, 0.2, 0.1], [0.3, 0.35, 0.35]], dtype=np.float32))
    assert list(p.predicted) == [0, 1] and list(p.predicted_names) == ["a", "b"]
    np.testing.assert_allclose(p.confidence, [0.7, 0.35])
    np.testing.assert_allclose(p.margin, [0.5, 0.0], atol=1e-6)


def test_mlp_reports_every_epoch_and_cancels_between_epochs(train_test):
    (x, y), _ = train_test
    calls = []
    train_head("mlp", x, y, epochs=5, progress=lambda done, total, what: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]

    token = CancelToken()

    def cancel_after_two(done, total, what):
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        train_head("mlp", x, y, epochs=50, progress=cancel_after_two, cancel=token)


def test_logistic_can_be_cancelled(train_test):
    (x, y), _ = train_test
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        train_head("logistic", x, y, cancel=token)


@pytest.mark.parametrize(
    "vectors, classes, words",
    [
        (np.zeros((4, 3)), ["a"] * 4, "at least two classes"),
        (np.zeros((4, 3)), ["a", "a", "a", "mito"], "'mito' (1)"),
        (np.zeros((4, 3)), ["a", "a", "b"], "4 cell embeddings but 3 class annotations"),
        (np.array([[0, 1], [np.nan, 0], [1, 1], [2, 2]]), ["a", "a", "b", "b"], "NaN"),
        (np.zeros((4, 3)), ["a", "a", "", ""], "empty class name"),
    ],
)
def test_training_errors_say_what_to_do(vectors, classes, words):
    for kind in HEADS:
        with pytest.raises(DinolocError, match=None) as error:
            train_head(kind, vectors, classes)
        assert words in str(error.value)


def test_prediction_with_other_embedding_size_names_both_sizes(train_test):
    (x, y), _ = train_test
    head = train_head("knn", x, y)
    with pytest.raises(DinolocError, match="trained on 64-dimensional embeddings, but these cells have 384"):
        head.predict(np.zeros((2, 384), dtype=np.float32))


def test_bad_choices_are_refused():
    x, y = np.eye(4, dtype=np.float32), ["a", "a", "b", "b"]
    with pytest.raises(DinolocError, match="Unknown head 'svm'"):
        train_head("svm", x, y)
    with pytest.raises(DinolocError, match="no setting"):
        train_head("knn", x, y, epochs=3)
    with pytest.raises(DinolocError, match="not in the class list"):
        train_head("knn", x, y, class_names=["a"])
    with pytest.raises(DinolocError, match="not been trained"):
        HEADS["logistic"]().predict_proba(x)
    with pytest.raises(DinolocError, match="unknown kind"):
        head_from_state({}, {"kind": "forest"})


def test_every_head_is_described():
    for kind, head in HEADS.items():
        assert head.kind == kind and head.description and head.paper


def test_a_cancelled_head_counts_as_untrained(train_test):
    from napari_dinoloc.core.heads import make_head

    (x, y), _ = train_test
    token = CancelToken()
    head = make_head("mlp", epochs=20)
    with pytest.raises(Cancelled):
        head.fit(x, y, progress=lambda done, total, what: token.cancel(), cancel=token)
    with pytest.raises(DinolocError, match="not been trained"):
        head.predict_proba(x)
    with pytest.raises(DinolocError, match="wrong type"):
        make_head("knn", k="many")
