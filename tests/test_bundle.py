import json
import pickle
import struct

import numpy as np
import pytest

import napari_dinoloc
from napari_dinoloc.core.bundle import (
    ModelBundle,
    bundle_channels,
    check_bundle_fits,
    load_bundle,
    save_bundle,
    write_safetensors,
)
from napari_dinoloc.core.errors import Cancelled, DinolocError
from napari_dinoloc.core.heads import train_head
from napari_dinoloc.core.progress import CancelToken

HPA_STAINS = ("microtubules", "protein", "nucleus", "er")


def cells(seed=0, dim=24):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(5).normal(size=(3, dim))
    y = np.repeat(np.arange(3), 8)
    return (centres[y] + 0.5 * rng.normal(size=(len(y), dim))).astype(np.float32), [("nucleoli", "er", "mito")[i] for i in y]


def make_bundle(kind="logistic", stains=HPA_STAINS, backbone_state=None, **params):
    x, y = cells()
    head = train_head(kind, x, y, **params)
    return ModelBundle(
        head=head, backbone_name="dino-vits16-hpa", weights_hash="ab" * 32, stains=stains, strategy="natural",
        embedding="cls", crop_size=96, input_size=224, normalization="self", mask_background=True,
        class_counts={"er": 8, "mito": 8, "nucleoli": 8}, metrics={"macro_f1": 0.91, "folds": 5}, seed=7,
        backbone_state=backbone_state,
    )


@pytest.mark.parametrize("kind, params", [("knn", {}), ("logistic", {}), ("mlp", {"epochs": 5})])
def test_saved_bundle_predicts_identically_after_loading(tmp_path, kind, params):
    bundle = make_bundle(kind, **params)
    path = save_bundle(bundle, tmp_path / "model.dinoloc")
    loaded = load_bundle(path)
    queries, _ = cells(seed=1)
    assert loaded.head is not bundle.head
    assert np.array_equal(loaded.head.predict_proba(queries), bundle.head.predict_proba(queries))
    assert loaded.class_names == ("er", "mito", "nucleoli")


def test_metadata_survives(tmp_path):
    bundle = make_bundle()
    loaded = load_bundle(save_bundle(bundle, tmp_path / "model.dinoloc"))
    for name in ("backbone_name", "weights_hash", "stains", "strategy", "embedding", "crop_size", "input_size",
                 "normalization", "mask_background", "class_counts", "metrics", "seed"):
        assert getattr(loaded, name) == getattr(bundle, name), name
    assert loaded.head.params == bundle.head.params and loaded.backbone_state is None
    assert loaded.versions["napari_dinoloc"] == napari_dinoloc.__version__
    assert loaded.versions["torch"] and loaded.versions["created"].startswith("20")
    assert "dino-vits16-hpa" in loaded.card() and "macro F1: 0.910" in loaded.card()


def test_file_is_plain_safetensors_with_the_documented_layout(tmp_path):
    from safetensors import safe_open

    path = save_bundle(make_bundle(), tmp_path / "model.dinoloc")
    with safe_open(str(path), framework="np") as handle:
        keys = set(handle.keys())
        info = json.loads(handle.metadata()["dinoloc"])
    assert keys == {"head.scaler_mean", "head.scaler_scale", "head.weight", "head.bias", "head.familiar_reference"}
    assert info["head"]["familiarity"]["threshold"] > 0  # cells farther than this from every training cell: unfamiliar
    assert info["class_names"] == ["er", "mito", "nucleoli"] and info["format_version"] == 1
    assert info["head"]["kind"] == "logistic" and info["backbone"]["weights_hash"] == "ab" * 32


def test_fine_tuned_backbone_weights_round_trip(tmp_path):
    import torch

    state = {"blocks.0.attn.qkv.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
             "pos_embed": torch.ones(1, 2, 4, dtype=torch.bfloat16),  # torch tensors are accepted too
             "cls_token": np.zeros((1, 1, 4), dtype=np.float16)}
    loaded = load_bundle(save_bundle(make_bundle(backbone_state=state), tmp_path / "tuned.dinoloc"))
    assert set(loaded.backbone_state) == set(state)
    assert np.array_equal(loaded.backbone_state["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert loaded.backbone_state["pos_embed"].dtype == np.float32 and loaded.backbone_state["cls_token"].dtype == np.float16
    assert "fine-tuned weights included" in loaded.card()


def test_suffix_is_added(tmp_path):
    assert save_bundle(make_bundle("knn"), tmp_path / "model").name == "model.dinoloc"


def _safetensors_without_our_description(path):
    with open(path, "wb") as handle:
        write_safetensors(handle, {"w": np.zeros(3, np.float32)}, {"format": "pt"})


def _bundle_of_newer_format(path):
    save_bundle(make_bundle("knn"), path)
    from safetensors.numpy import load_file
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        info = json.loads(handle.metadata()["dinoloc"])
    tensors = load_file(str(path))
    info["format_version"] = 99
    with open(path, "wb") as handle:
        write_safetensors(handle, tensors, {"dinoloc": json.dumps(info)})


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a complete model bundle"),
        (lambda p: p.write_bytes(p.read_bytes()[:-40]), "not a complete model bundle"),
        (lambda p: p.write_bytes(p.read_bytes()[:6]), "not a complete model bundle"),
        (lambda p: p.write_bytes(b""), "not a complete model bundle"),
        (lambda p: p.write_bytes(pickle.dumps({"head": [1, 2, 3]})), "PyTorch/pickle file"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 100), "PyTorch/pickle file"),
        (lambda p: p.write_bytes(struct.pack("<Q", 12) + b"{not json!!}"), "not a complete model bundle"),
        (_safetensors_without_our_description, "not a napari-dinoloc model bundle"),
        (_bundle_of_newer_format, "newer napari-dinoloc"),
    ],
)
def test_damaged_or_foreign_files_are_refused_clearly(tmp_path, damage, words):
    path = tmp_path / "model.dinoloc"
    save_bundle(make_bundle("knn"), path)
    damage(path)
    with pytest.raises(DinolocError, match=words):
        load_bundle(path)


def test_a_torch_checkpoint_renamed_is_refused_without_unpickling(tmp_path):
    import torch

    path = tmp_path / "checkpoint.dinoloc"
    torch.save({"teacher": {"w": torch.zeros(2)}}, path)
    with pytest.raises(DinolocError, match="choose it as the backbone weights"):
        load_bundle(path)


def test_missing_file_is_explained(tmp_path):
    with pytest.raises(DinolocError, match="no model file"):
        load_bundle(tmp_path / "nothing.dinoloc")


def test_four_stain_bundle_is_refused_on_a_two_stain_image():
    bundle = make_bundle("knn", stains=HPA_STAINS)
    with pytest.raises(DinolocError) as error:
        check_bundle_fits(bundle, ("nucleus", "protein"))
    message = str(error.value)
    assert "microtubules, protein, nucleus, er" in message  # what the model needs
    assert "this image has nucleus, protein" in message  # what the image has
    assert "lacks microtubules, er" in message


def test_stains_are_matched_by_name_not_position():
    bundle = make_bundle("knn", stains=("protein", "nucleus"))
    check_bundle_fits(bundle, ("nucleus", "other", "protein"))
    assert bundle_channels(bundle, ("nucleus", "other", "protein")) == (2, 0)


def test_cancel_during_save_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "model.dinoloc"
    save_bundle(make_bundle("knn"), path)
    previous = path.read_bytes()
    state = {f"blocks.{i}.weight": np.full((64, 64), i, np.float32) for i in range(6)}
    token = CancelToken()

    def cancel_after_first_tensor(done, total, what):
        if done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        save_bundle(make_bundle("logistic", backbone_state=state), path, cancel=token, progress=cancel_after_first_tensor)
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["model.dinoloc"]

    fresh = tmp_path / "fresh.dinoloc"
    with pytest.raises(Cancelled):
        save_bundle(make_bundle("knn"), fresh, cancel=token)
    assert not fresh.exists() and [p.name for p in tmp_path.iterdir()] == ["model.dinoloc"]


def test_untrained_head_and_bad_metadata_are_refused(tmp_path):
    from napari_dinoloc.core.heads import make_head

    bundle = make_bundle("knn")
    bundle.metrics = {"when": object()}
    with pytest.raises(DinolocError, match="JSON"):
        save_bundle(bundle, tmp_path / "m.dinoloc")
    bundle.metrics, bundle.head = {}, make_head("knn")
    with pytest.raises(DinolocError, match="not been trained"):
        save_bundle(bundle, tmp_path / "m.dinoloc")
    bundle = make_bundle("knn", stains=("protein", "actin"))
    with pytest.raises(DinolocError, match="Unknown stain"):
        save_bundle(bundle, tmp_path / "m.dinoloc")
    assert list(tmp_path.iterdir()) == []


def test_bundle_of_a_head_on_a_finetuned_backbone_carries_its_weights(tmp_path):
    """A head trained on fine-tuned embeddings is useless without those weights: they travel along."""
    import torch

    from napari_dinoloc.core.backbones import load_backbone
    from napari_dinoloc.core.bundle import backbone_for_bundle, bundle_for_head, load_bundle, save_bundle
    from napari_dinoloc.core.embedding import EmbedSettings
    from napari_dinoloc.core.backbones import apply_finetuned, is_fine_tuned
    from napari_dinoloc.core.heads import train_head

    base = load_backbone("random-tiny", device="cpu")
    state = {k: v.detach().numpy() + 0.01 for k, v in base.model.state_dict().items()}
    tuned = apply_finetuned(base, state)
    assert tuned.finetuned_from is base and tuned.base_weights_hash == base.weights_hash != tuned.weights_hash
    assert is_fine_tuned(tuned) and tuned.is_finetuned and not is_fine_tuned(base)
    rng = np.random.default_rng(0)
    head = train_head("knn", rng.normal(size=(6, 64)).astype(np.float32), ["a", "a", "a", "b", "b", "b"])
    bundle = bundle_for_head(head, tuned, ("nucleus", "protein"), EmbedSettings(crop_size=64), ["a"] * 3 + ["b"] * 3)
    path = save_bundle(bundle, tmp_path / "tuned.dinoloc")
    reloaded = backbone_for_bundle(load_bundle(path), device="cpu")
    assert reloaded.weights_hash == tuned.weights_hash
    for key, value in tuned.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[key], value)
