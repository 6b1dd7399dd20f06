"""The embedding engine: batching, the cache and its signature, cancel, progress, reduced precision."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import napari_dinoloc
from napari_dinoloc.core.backbones import load_backbone
from napari_dinoloc.core.cache import EmbeddingCache
from napari_dinoloc.core.embedding import Embedder, EmbedSettings, embed_cells, embed_field
from napari_dinoloc.core.errors import Cancelled
from napari_dinoloc.core.files import hash_array
from napari_dinoloc.core.images import CellImage
from napari_dinoloc.core.progress import CancelToken
from napari_dinoloc.core.segmentation import CellTable

SETTINGS = EmbedSettings(crop_size=24, batch_size=4, device="cpu", precision="fp32")


def make_image(seed=0, stains=("nucleus", "protein")):
    rng = np.random.default_rng(seed)
    data = rng.random((len(stains), 64, 64), dtype=np.float32)
    return CellImage(data, tuple(stains), "test", hash_array(data))


def make_labels():
    labels = np.zeros((64, 64), np.int32)
    for i, (y, x) in enumerate([(y, x) for y in (10, 30, 50) for x in (12, 32, 52)], start=1):  # 9 cells
        labels[y - 5:y + 5, x - 6:x + 6] = i
    return labels


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random-tiny", device="cpu")


class CountingTokens:
    """Counts forward passes; patched onto one LoadedBackbone instance."""

    def __init__(self, backbone):
        self.calls, self._tokens = 0, type(backbone).tokens.__get__(backbone)

    def __call__(self, x):
        self.calls += 1
        return self._tokens(x)


@pytest.fixture
def counted(backbone, monkeypatch):
    counter = CountingTokens(backbone)
    monkeypatch.setattr(backbone, "tokens", counter, raising=False)
    return counter


def test_embed_cells_gives_one_vector_per_cell_independent_of_batching(backbone):
    image, labels = make_image(), make_labels()
    result = embed_cells(image, labels, backbone, SETTINGS)
    assert result.labels.tolist() == list(range(1, 10))
    assert result.vectors.shape == (9, 64) and result.vectors.dtype == np.float32
    one_batch = embed_cells(image, labels, backbone, replace(SETTINGS, batch_size=32))
    np.testing.assert_allclose(result.vectors, one_batch.vectors, atol=1e-5)
    assert result.signature["backbone"] == "random-tiny" and result.signature["weights_hash"] == "random:0"
    assert result.signature["precision_used"] == "fp32" and result.signature["crop_size"] == 24


def test_cache_hit_returns_identical_vectors_without_running_the_model(backbone, counted, tmp_path):
    cache = EmbeddingCache(tmp_path)
    image, labels = make_image(), make_labels()
    first = embed_cells(image, labels, backbone, SETTINGS, cache=cache)
    assert counted.calls > 0
    counted.calls = 0
    progress = []
    second = embed_cells(image, labels, backbone, replace(SETTINGS, batch_size=2), cache=cache,
                         progress=lambda *a: progress.append(a))
    assert counted.calls == 0
    np.testing.assert_array_equal(first.vectors, second.vectors)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert second.signature == first.signature
    assert progress[-1][:2] == (9, 9)


CHANGES = {
    "strategy": lambda img, lab, bb, s: (img, lab, bb, replace(s, strategy="replicate")),
    "embedding": lambda img, lab, bb, s: (img, lab, bb, replace(s, embedding="mean")),
    "crop_size": lambda img, lab, bb, s: (img, lab, bb, replace(s, crop_size=16)),
    "input_size": lambda img, lab, bb, s: (img, lab, bb, replace(s, input_size=40)),
    "mask_background": lambda img, lab, bb, s: (img, lab, bb, replace(s, mask_background=False)),
    "precision": lambda img, lab, bb, s: (img, lab, bb, replace(s, precision="bf16")),
    "image": lambda img, lab, bb, s: (make_image(seed=1), lab, bb, s),
    "stains": lambda img, lab, bb, s: (CellImage(img.data, ("protein", "nucleus"), "t", img.content_hash), lab, bb, s),
    "labels": lambda img, lab, bb, s: (img, np.where(lab == 9, 0, lab).astype(np.int32), bb, s),
    "weights": lambda img, lab, bb, s: (img, lab, replace(bb, weights_hash="sha:other"), s),
    "backbone": lambda img, lab, bb, s: (img, lab, replace(bb, spec=replace(bb.spec, name="random-tiny-2")), s),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_any_changed_signature_field_recomputes(backbone, counted, tmp_path, field):
    cache = EmbeddingCache(tmp_path)
    image, labels = make_image(), make_labels()
    embed_cells(image, labels, backbone, SETTINGS, cache=cache)
    image2, labels2, backbone2, settings2 = CHANGES[field](image, labels, backbone, SETTINGS)
    if backbone2 is not backbone:
        backbone2.tokens = counted  # the replaced backbone is a copy; keep counting
    counted.calls = 0
    embed_cells(image2, labels2, backbone2, settings2, cache=cache)
    assert counted.calls > 0, f"a changed {field} reused the cache"
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_package_version_is_part_of_the_signature(backbone, counted, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    embed_cells(make_image(), make_labels(), backbone, SETTINGS, cache=cache)
    monkeypatch.setattr(napari_dinoloc, "__version__", "99.0")
    counted.calls = 0
    embed_cells(make_image(), make_labels(), backbone, SETTINGS, cache=cache)
    assert counted.calls > 0


def test_stored_signature_must_match_field_by_field(backbone, counted, tmp_path):
    cache = EmbeddingCache(tmp_path)
    embed_cells(make_image(), make_labels(), backbone, SETTINGS, cache=cache)
    (meta_path,) = tmp_path.glob("*.json")
    meta = json.loads(meta_path.read_text())
    meta["signature"]["strategy"] = "replicate"  # same file name, different stored signature
    meta_path.write_text(json.dumps(meta))
    counted.calls = 0
    embed_cells(make_image(), make_labels(), backbone, SETTINGS, cache=cache)
    assert counted.calls > 0


def test_cache_never_unpickles(backbone, tmp_path):
    cache = EmbeddingCache(tmp_path)
    result = embed_cells(make_image(), make_labels(), backbone, SETTINGS, cache=cache)
    sig = json.loads(next(tmp_path.glob("*.json")).read_text())["signature"]
    assert cache.get(sig) is not None
    (npz,) = tmp_path.glob("*.npz")
    np.savez(npz, labels=np.array([object()], dtype=object), vectors=result.vectors)
    assert cache.get(sig) is None  # object arrays are refused (allow_pickle=False): recompute


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "c"))
    assert EmbeddingCache().root == tmp_path / "c"


def test_cancel_raises_cancelled_and_caches_nothing(backbone, tmp_path):
    token = CancelToken()
    seen = []

    def progress(done, total, what):
        seen.append(done)
        if done >= 4:
            token.cancel()

    cache = EmbeddingCache(tmp_path)
    with pytest.raises(Cancelled):
        embed_cells(make_image(), make_labels(), backbone, SETTINGS, cache=cache, progress=progress, cancel=token)
    assert max(seen) < 9
    assert not list(tmp_path.glob("*"))


def test_progress_reaches_total(backbone):
    seen = []
    embed_cells(make_image(), make_labels(), backbone, SETTINGS, progress=lambda *a: seen.append(a))
    done = [s[0] for s in seen]
    assert done == sorted(done) and seen[-1][:2] == (9, 9) and all(s[1] == 9 for s in seen)


def test_errors_in_crop_preparation_reach_the_caller(backbone):
    image = make_image()
    with pytest.raises(Exception, match="label image"):
        embed_cells(image, np.zeros((10, 10), np.int32), backbone, SETTINGS, table=CellTable.from_labels(make_labels()))


def test_bf16_is_kept_when_it_agrees_with_fp32(backbone):
    image, labels = make_image(), make_labels()
    fp32 = embed_cells(image, labels, backbone, SETTINGS)
    bf16 = embed_cells(image, labels, backbone, replace(SETTINGS, precision="bf16"))
    assert bf16.signature["precision_used"] == "bf16"
    cosine = (fp32.vectors * bf16.vectors).sum(1) / np.linalg.norm(fp32.vectors, axis=1) / np.linalg.norm(bf16.vectors, axis=1)
    assert cosine.min() >= 0.999
    assert np.abs(fp32.vectors - bf16.vectors).max() > 0  # it really ran in bf16


def test_precision_is_checked_once_per_backbone(counted, backbone):
    backbone.precision_checks.clear()
    image, labels, settings = make_image(), make_labels(), replace(SETTINGS, precision="bf16")
    embed_cells(image, labels, backbone, settings)
    assert counted.calls == 3 + 1  # 9 cells in batches of 4, plus the first batch again in fp32
    counted.calls = 0
    again = embed_cells(make_image(seed=2), labels, backbone, settings)
    assert counted.calls == 3 and again.signature["precision_used"] == "bf16"


def test_bf16_falls_back_to_fp32_when_it_disagrees(monkeypatch):
    backbone = load_backbone("random-tiny", device="cpu")  # fresh: no earlier precision check
    real = type(backbone).tokens.__get__(backbone)

    def degraded(x):  # what a model with bf16 overflow would do
        tokens = real(x)
        return tokens + 0.5 * torch.randn_like(tokens) if torch.is_autocast_enabled("cpu") else tokens

    image, labels = make_image(), make_labels()
    fp32 = embed_cells(image, labels, backbone, SETTINGS)
    monkeypatch.setattr(backbone, "tokens", degraded, raising=False)
    with pytest.warns(RuntimeWarning, match="differ from fp32"):
        fell_back = embed_cells(image, labels, backbone, replace(SETTINGS, precision="bf16"))
    assert fell_back.signature["precision_used"] == "fp32"
    np.testing.assert_allclose(fell_back.vectors, fp32.vectors, atol=1e-6)
    again = embed_cells(make_image(seed=3), labels, backbone, replace(SETTINGS, precision="bf16"))
    assert again.signature["precision_used"] == "fp32"  # the failed check is remembered


def test_embedder_resizes_crops_to_the_input_size(backbone):
    crops = np.random.default_rng(0).random((2, 2, 48, 48), dtype=np.float32)
    embedder = Embedder(backbone, EmbedSettings(input_size=48, precision="fp32"))
    prepared = embedder.prepare(crops, ("nucleus", "protein"))
    assert tuple(prepared.inputs.shape) == (2, 3, 48, 48)
    small = Embedder(backbone, EmbedSettings(precision="fp32")).prepare(crops, ("nucleus", "protein"))
    assert tuple(small.inputs.shape) == (2, 3, 32, 32)
    assert embedder.infer(prepared).shape == (2, 64)
    with pytest.raises(Exception, match="multiple of the backbone's patch size"):
        Embedder(backbone, EmbedSettings(input_size=30))


def test_embed_field_is_the_mean_over_tiles(backbone, tmp_path):
    image = make_image()
    result = embed_field(image, backbone, SETTINGS, tile_size=32, cache=EmbeddingCache(tmp_path))
    assert result.vectors.shape == (1, 64) and result.labels.tolist() == [0]
    tiles = np.stack([image.data[:, y:y + 32, x:x + 32] for y in (0, 32) for x in (0, 32)])
    expected = Embedder(backbone, SETTINGS).embed_batch(tiles, image.stains).mean(0)
    np.testing.assert_allclose(result.vectors[0], expected, atol=1e-5)
    whole = embed_field(image, backbone, SETTINGS, cache=EmbeddingCache(tmp_path))
    assert whole.vectors.shape == (1, 64) and np.abs(whole.vectors - result.vectors).max() > 1e-4
