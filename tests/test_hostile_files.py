"""Crafted and damaged files (issue 10): each is refused with a DinolocError that says what is wrong,
without a traceback in the message, without allocating what the file claims, and without writing."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import napari_dinoloc
from napari_dinoloc.core.backbones import load_backbone, read_checkpoint, save_backbone_weights
from napari_dinoloc.core.backbones._fitting import SPEC_METADATA_KEY
from napari_dinoloc.core.batch import read_cell_classes
from napari_dinoloc.core.bundle import load_bundle, save_bundle, write_safetensors
from napari_dinoloc.core.errors import DinolocError


def refused(call, *words) -> str:
    """Run ``call`` in a folder snapshot: it must raise DinolocError naming ``words`` and write nothing."""
    with pytest.raises(DinolocError) as caught:
        call()
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)
    assert "Traceback" not in message and 'File "' not in message
    assert "weights_only" not in message  # never pass torch's unsafe hint on
    return message


def unchanged(folder: Path, call, *words) -> str:
    before = sorted(p.name for p in folder.iterdir())
    message = refused(call, *words)
    assert sorted(p.name for p in folder.iterdir()) == before  # no partial output, no temporaries
    return message


# --- model bundles ------------------------------------------------------------------------------

def bundle_file(path: Path, head_config: dict, tensors: dict, **info_changes) -> Path:
    info = {"format": "napari-dinoloc model bundle", "format_version": 1, "class_names": head_config["class_names"],
            "head": head_config, "backbone": {"name": "random-tiny", "weights_hash": "x", "fine_tuned": False},
            "stains": ["protein"], "strategy": "natural", "embedding": "cls", "crop_size": 64, "input_size": 32,
            "normalization": "self", "mask_background": True, "class_counts": {}, "metrics": {}, "seed": 0,
            **info_changes}
    with open(path, "wb") as handle:
        write_safetensors(handle, {f"head.{k}": v for k, v in tensors.items()}, {"dinoloc": json.dumps(info)})
    return path


def small_logistic(dim=4, k=2):
    return {"scaler_mean": np.zeros(dim, np.float32), "scaler_scale": np.ones(dim, np.float32),
            "weight": np.zeros((k, dim), np.float32), "bias": np.zeros(k, np.float32)}


def test_bundle_head_claiming_200000_inputs_is_refused(tmp_path):
    config = {"kind": "mlp", "class_names": ["a", "b"], "params": {"hidden": [512, 256]}, "input_dim": 200_000}
    path = bundle_file(tmp_path / "m.dinoloc", config, small_logistic())
    assert path.stat().st_size < 4000
    unchanged(tmp_path, lambda: load_bundle(path), "200000", "100000")


def test_bundle_head_whose_sizes_disagree_with_its_tensors_is_refused_before_building(tmp_path):
    config = {"kind": "mlp", "class_names": ["a", "b"], "params": {"hidden": [90_000, 90_000]}, "input_dim": 90_000}
    tensors = {"scaler_mean": np.zeros(4, np.float32), "scaler_scale": np.ones(4, np.float32),
               **{f"net.{i}.{p}": np.zeros(2, np.float32) for i in (0, 3, 6) for p in ("weight", "bias")}}
    path = bundle_file(tmp_path / "m.dinoloc", config, tensors)
    unchanged(tmp_path, lambda: load_bundle(path), "scaler_mean", "(4,)", "90000", "damaged or crafted")


def test_bundle_with_too_many_classes_is_refused(tmp_path):
    names = [f"c{i}" for i in range(10_001)]
    config = {"kind": "logistic", "class_names": names, "params": {}, "input_dim": 4}
    path = bundle_file(tmp_path / "m.dinoloc", config, small_logistic())
    unchanged(tmp_path, lambda: load_bundle(path), "10001", "10000")


@pytest.mark.parametrize("key, value", [("input_size", 100_000), ("crop_size", 10**9), ("input_size", -3)])
def test_bundle_declaring_a_huge_input_or_crop_size_is_refused(tmp_path, key, value):
    config = {"kind": "logistic", "class_names": ["a", "b"], "params": {}, "input_dim": 4}
    path = bundle_file(tmp_path / "m.dinoloc", config, small_logistic(), **{key: value})
    unchanged(tmp_path, lambda: load_bundle(path), key.replace("_", " "), str(value))


def test_tensor_larger_than_the_file_is_refused(tmp_path):
    header = {"__metadata__": {"dinoloc": "{}"},
              "head.weight": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]}}
    encoded = json.dumps(header).encode()
    path = tmp_path / "m.dinoloc"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * 64)
    unchanged(tmp_path, lambda: load_bundle(path), "not a complete model bundle", "100000, 100000")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(path.read_bytes())
    unchanged(tmp_path, lambda: read_checkpoint(weights), "not a valid safetensors file", "crafted")


def test_pickle_and_torch_files_are_not_taken_for_bundles(tmp_path):
    path = tmp_path / "m.dinoloc"
    torch.save({"a": torch.zeros(2)}, path)
    unchanged(tmp_path, lambda: load_bundle(path), "PyTorch/pickle file")


def test_saving_onto_an_existing_folder_is_refused_before_writing(tmp_path):
    from test_bundle_integrity import tiny_bundle

    (tmp_path / "out.dinoloc").mkdir()
    bundle = tiny_bundle(np.random.default_rng(0), ["a", "b"])
    unchanged(tmp_path, lambda: save_bundle(bundle, tmp_path / "out.dinoloc"), "existing folder")


# --- backbone weights ---------------------------------------------------------------------------

def tiny_weights_with_spec(path: Path, **spec_changes) -> Path:
    """A real random-tiny weights file whose stored description is changed."""
    save_backbone_weights(load_backbone("random-tiny", device="cpu"), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()[SPEC_METADATA_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    kwargs = spec_changes.pop("arch_kwargs", {})
    spec = {**spec, **spec_changes, "arch_kwargs": {**spec["arch_kwargs"], **kwargs}}
    save_file(tensors, str(path), metadata={SPEC_METADATA_KEY: json.dumps(spec)})
    return path


def test_weights_claiming_a_huge_model_are_refused(tmp_path):
    path = tiny_weights_with_spec(tmp_path / "w.safetensors", arch_kwargs={"embed_dim": 16384, "depth": 48})
    assert path.stat().st_size < 600_000
    unchanged(tmp_path, lambda: load_backbone("checkpoint", weights=path, device="cpu"), "embed_dim", "16384", "4096")


def test_weights_claiming_a_large_model_within_limits_are_refused_before_building(tmp_path):
    path = tiny_weights_with_spec(tmp_path / "w.safetensors",
                                  arch_kwargs={"embed_dim": 4096, "depth": 64, "num_heads": 64})
    unchanged(tmp_path, lambda: load_backbone("checkpoint", weights=path, device="cpu"),
              "million weights but holds only", "crafted")


def test_checkpoint_whose_block_names_claim_many_blocks_is_refused(tmp_path):
    state = {"patch_embed.proj.weight": torch.zeros(2048, 3, 16, 16), "blocks.0.mlp.fc1.weight": torch.zeros(8192, 1),
             "blocks.63.norm1.weight": torch.zeros(1), "cls_token": torch.zeros(1, 1, 2048)}
    path = tmp_path / "w.pth"
    torch.save(state, path)
    unchanged(tmp_path, lambda: load_backbone("checkpoint", weights=path, device="cpu"), "million weights but holds only")


@pytest.mark.parametrize("arch", ["hf-hub:someone/model", "timm/vit_small_patch16_224.dino", "local-dir:/tmp/x",
                                  "not_a_timm_model", ""])
def test_weights_naming_a_hub_model_are_refused(tmp_path, monkeypatch, arch):
    import timm

    calls = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    path = tiny_weights_with_spec(tmp_path / "w.safetensors", arch=arch)
    unchanged(tmp_path, lambda: load_backbone("checkpoint", weights=path, device="cpu"), "not a known timm architecture")
    assert calls == []


def test_weights_naming_a_plain_timm_architecture_still_load(tmp_path):
    path = tiny_weights_with_spec(tmp_path / "w.safetensors", arch="vit_small_patch16_224",
                                  arch_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 8})
    assert load_backbone("checkpoint", weights=path, device="cpu").embed_dim == 64


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload, name", [("system", "system"), ("eval", "eval")])
def test_code_bearing_pickles_are_named_and_not_run(tmp_path, payload, name):
    marker = tmp_path / "ran"
    path = tmp_path / "w.pth"
    torch.save({"x": _System(marker) if payload == "system" else _Eval()}, path)
    message = unchanged(tmp_path, lambda: load_backbone("checkpoint", weights=path, device="cpu"),
                        "code-bearing objects", name, "will not be loaded")
    assert not marker.exists()
    assert "Re-running" not in message and "WeightsUnpickler" not in message


# --- images, annotations, crops, cache ---------------------------------------------------------

def test_a_20000_pixel_tiff_fails_at_once(tmp_path):
    import tifffile

    from napari_dinoloc.core.images import load_cell_image

    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, shape=(20000, 20000), dtype="uint16")  # header only: the pixels are never stored
    start = time.perf_counter()
    unchanged(tmp_path, lambda: load_cell_image(path, "protein"), "too large", "20000 × 20000", "16384")
    assert time.perf_counter() - start < 1.0


def png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    return path


def test_a_20000_pixel_png_fails_at_once(tmp_path):
    from napari_dinoloc.core.images import load_cell_image

    path = png_header_only(tmp_path / "huge.png", 20000, 20000)
    start = time.perf_counter()
    unchanged(tmp_path, lambda: load_cell_image(path, "protein"), "too large", "16384")
    assert time.perf_counter() - start < 1.0


def test_an_image_larger_than_free_memory_is_refused(tmp_path, monkeypatch):
    import tifffile

    from napari_dinoloc.core.images import _size, load_cell_image

    monkeypatch.setattr(_size, "available_memory", lambda: 50_000_000)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, shape=(3, 4000, 4000), dtype="uint16", photometric="minisblack")
    unchanged(tmp_path, lambda: load_cell_image(path, "protein,nucleus,er"), "GB of memory", "0.1 GB are free")


def test_annotation_csv_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_bytes("image,label,class\nfield_é,1,nucléole\n".encode("latin-1"))
    unchanged(tmp_path, lambda: read_cell_classes(path), "not UTF-8", "CSV UTF-8")


def test_a_crop_size_that_cannot_fit_in_memory_is_refused_before_allocating(monkeypatch):
    from napari_dinoloc.core import crops
    from napari_dinoloc.core.images import make_cell_image
    from napari_dinoloc.core.segmentation import CellTable

    image = make_cell_image(np.random.default_rng(0).random((2, 64, 64), np.float32), ("protein", "nucleus"))
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 10:20] = 1
    monkeypatch.setattr(crops, "crop_memory_limit", lambda: 1_000_000_000)
    call = lambda: next(crops.iter_cell_crops(image, labels, CellTable.from_labels(labels), 100_000, True, 32))  # noqa: E731
    refused(call, "100000 × 100000", "at most 1976 px", "smaller batch size")


def test_a_cache_entry_that_is_json_but_not_an_object_is_recomputed(tmp_path):
    from napari_dinoloc.core.cache import EmbeddingCache
    from napari_dinoloc.core.embedding import Embeddings

    cache = EmbeddingCache(tmp_path)
    sig = {"kind": "cells", "image_hash": "abc"}
    cache.put(sig, Embeddings(np.array([1, 2]), np.ones((2, 3), np.float32), {"dim": 3}))
    meta = next(tmp_path.glob("*.json"))
    meta.write_text("[1, 2, 3]")
    with pytest.warns(RuntimeWarning, match="damaged embedding cache entry .* not a cache record"):
        assert cache.get(sig) is None
    assert not meta.exists()


# --- memory: every crafted file above, in a fresh process --------------------------------------

def test_crafted_files_never_allocate_what_they_claim(tmp_path):
    config = {"kind": "mlp", "class_names": ["a", "b"], "params": {"hidden": [90_000, 90_000]}, "input_dim": 90_000}
    tensors = {"scaler_mean": np.zeros(4, np.float32), "scaler_scale": np.ones(4, np.float32),
               **{f"net.{i}.{p}": np.zeros(2, np.float32) for i in (0, 3, 6) for p in ("weight", "bias")}}
    bundle = bundle_file(tmp_path / "m.dinoloc", config, tensors)
    huge = tiny_weights_with_spec(tmp_path / "huge.safetensors", arch_kwargs={"embed_dim": 4096, "depth": 64, "num_heads": 64})
    png = png_header_only(tmp_path / "huge.png", 20000, 20000)
    script = textwrap.dedent(f"""
        import resource, sys
        try:  # a regression must fail here with MemoryError, not exhaust the machine
            resource.setrlimit(resource.RLIMIT_AS, (16 * 1024**3, resource.getrlimit(resource.RLIMIT_AS)[1]))
        except (ValueError, OSError):
            pass
        from napari_dinoloc.core.backbones import load_backbone
        from napari_dinoloc.core.bundle import load_bundle
        from napari_dinoloc.core.errors import DinolocError
        from napari_dinoloc.core.images import load_cell_image
        load_backbone("random-tiny", device="cpu")  # imports and a small model: the baseline
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for call in (lambda: load_bundle({str(bundle)!r}),
                     lambda: load_backbone("checkpoint", weights={str(huge)!r}, device="cpu"),
                     lambda: load_cell_image({str(png)!r}, "protein")):
            try:
                call()
                sys.exit("accepted a crafted file")
            except DinolocError:
                pass
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(napari_dinoloc.__file__).parents[1])}  # the code under test
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) < 200  # MB of peak memory beyond the baseline
