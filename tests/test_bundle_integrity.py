"""Bundles reload whatever their header length (issue 10, item 1) and report damage (item 6)."""

import json
import string

import numpy as np
import pytest

from napari_dinoloc.core.bundle import ModelBundle, load_bundle, save_bundle, write_safetensors
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.heads import head_from_state

STAINS = ("microtubules", "protein", "nucleus", "er")


def tiny_bundle(rng, class_names, metrics=None, extra=None) -> ModelBundle:
    dim, k = 4, len(class_names)
    tensors = {"scaler_mean": rng.normal(size=dim).astype(np.float32), "scaler_scale": np.ones(dim, np.float32),
               "weight": rng.normal(size=(k, dim)).astype(np.float32), "bias": rng.normal(size=k).astype(np.float32)}
    head = head_from_state(tensors, {"kind": "logistic", "class_names": list(class_names), "params": {}, "input_dim": dim})
    return ModelBundle(
        head=head, backbone_name="random-tiny", weights_hash="cd" * 32, stains=STAINS, strategy="natural",
        embedding="cls", crop_size=64, input_size=32, normalization="self", mask_background=True,
        class_counts={n: int(c) for n, c in zip(class_names, rng.integers(2, 500, size=k))},
        metrics=metrics or {}, seed=int(rng.integers(1000)), extra=extra or {},
    )


def random_name(rng) -> str:
    letters = string.ascii_lowercase + "_"
    return "".join(rng.choice(list(letters), size=int(rng.integers(2, 25))))


def test_500_bundles_with_random_classes_and_metrics_all_reload(tmp_path):
    rng = np.random.default_rng(10)
    first_bytes = set()
    for i in range(500):
        names = sorted({random_name(rng) for _ in range(int(rng.integers(2, 6)))})
        if len(names) < 2:
            names = ["a", "b"]
        metrics = {"macro_f1": float(rng.random()), "accuracy": round(float(rng.random()), int(rng.integers(1, 8))),
                   "folds": int(rng.integers(2, 10))}
        bundle = tiny_bundle(rng, names, metrics)
        path = save_bundle(bundle, tmp_path / "model.dinoloc")
        first_bytes.add(path.read_bytes()[0])
        loaded = load_bundle(path)
        assert loaded.class_names == tuple(names) and loaded.metrics == metrics, i
    assert 0x80 in first_bytes  # the header length whose low byte looks like a pickle was exercised


def test_bundle_whose_header_length_starts_with_0x80_reloads(tmp_path):
    rng = np.random.default_rng(0)
    for padding in range(200):  # grow the description until the low byte of the header length is 0x80
        bundle = tiny_bundle(rng, ["er_and_golgi_network", "nucleoli"], extra={"note": "x" * padding})
        path = save_bundle(bundle, tmp_path / "model.dinoloc")
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_bundle(path).class_names == ("er_and_golgi_network", "nucleoli")


def test_bundle_with_class_er_and_golgi_network_reloads(tmp_path):
    bundle = tiny_bundle(np.random.default_rng(3), ["cytosol", "er_and_golgi_network"], {"macro_f1": 0.5})
    assert load_bundle(save_bundle(bundle, tmp_path / "m.dinoloc")).class_names == ("cytosol", "er_and_golgi_network")


def saved(tmp_path):
    bundle = tiny_bundle(np.random.default_rng(1), ["er", "mito"], {"macro_f1": 0.91})
    return save_bundle(bundle, tmp_path / "model.dinoloc")


def test_a_flipped_byte_in_the_weights_is_reported(tmp_path):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor: still a valid file, other numbers
    path.write_bytes(bytes(data))
    with pytest.raises(DinolocError, match=r"damaged \(the stored weights do not match their checksum\)"):
        load_bundle(path)


def test_a_changed_description_is_reported(tmp_path):
    path = saved(tmp_path)
    data = path.read_bytes()
    assert data.count(b"0.91") == 1
    path.write_bytes(data.replace(b"0.91", b"0.99"))
    with pytest.raises(DinolocError, match="description does not match its checksum"):
        load_bundle(path)


def test_bundles_without_a_checksum_still_load(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = saved(tmp_path)
    with safe_open(str(path), framework="np") as handle:
        info = json.loads(handle.metadata()["dinoloc"])
    tensors = load_file(str(path))
    assert "checksums" in info
    del info["checksums"]
    info["metrics"]["macro_f1"] = 0.5  # no checksum: nothing to compare with
    with open(path, "wb") as handle:
        write_safetensors(handle, tensors, {"dinoloc": json.dumps(info)})
    assert load_bundle(path).metrics["macro_f1"] == 0.5
