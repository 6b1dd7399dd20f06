"""Every hostile input of issue 10, through the command line in a fresh process (``python -m napari_dinoloc.cli``).

Each must end with exit status 2 and one ``dinoloc: error:`` line on stderr: no traceback, no partial
output, and the child's peak memory under 2 GB. The cases run a few at a time (a thread pool of
subprocesses); ``python tests/test_hostile_cli.py`` prints the counts docs/cli.md shows. A damaged
embedding cache is the one hostile input that is not an error: the entry is recomputed, with one warning line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_dinoloc
from napari_dinoloc.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_hostile_files import _Eval, _System, bundle_file, png_header_only, small_logistic, tiny_weights_with_spec  # noqa: E402

pytestmark = pytest.mark.slow  # about 60-90 s: some 55 fresh processes, three at a time

SRC = str(Path(napari_dinoloc.__file__).parents[1])  # the code under test
MEMORY_LIMIT_KB = 2 * 1024 * 1024
WORKERS = 3
TINY = ["--backbone", "random-tiny", "--crop-size", "64", "--channels", "nucleus=0,protein=1"]

# Runs the command, then prints the peak memory of its process (KB) as the last line of a side file.
WRAPPER = textwrap.dedent("""
    import resource, subprocess, sys
    done = subprocess.run(sys.argv[2:])
    open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    sys.exit(done.returncode)
""")


def run_cli(args, cwd: Path, env_extra=None) -> dict:
    """One dinoloc run in a fresh process: exit status, stdout, stderr, peak memory (KB)."""
    cwd.mkdir(parents=True, exist_ok=True)
    rss = cwd.parent / f"{cwd.name}.rss"
    env = {**os.environ, "PYTHONPATH": SRC, "DINOLOC_CACHE_DIR": str(cwd.parent / f"{cwd.name}.cache"),
           "HF_HOME": str(cwd.parent / f"{cwd.name}.hf"), **(env_extra or {})}
    done = subprocess.run([sys.executable, "-c", WRAPPER, str(rss), sys.executable, "-m", "napari_dinoloc.cli",
                           *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr, "rss_kb": int(rss.read_text() or 0)}


# ---- the kit: real sample files and crafted ones -------------------------------------------------------
def make_kit(root: Path) -> dict:
    s = root / "samples"
    assert main(["sample", str(s), "--count", "2", "--size", "384"]) == 0
    k = {"root": root, "img": s / "field_000.tif", "lab": s / "field_000_labels.tif", "img1": s / "field_001.tif",
         "lab1": s / "field_001_labels.tif", "csv": s / "cells.csv"}
    k["model"] = root / "model.dinoloc"
    assert main([str(a) for a in ["train", k["img"], "--labels", k["lab"], "--annotations", k["csv"], "--head",
                                  "logistic", "--out", k["model"], *TINY]]) == 0
    rows = k["csv"].read_text().splitlines()
    files = root / "files"
    files.mkdir()

    def write(name, text=None, data=None):
        path = files / name
        path.write_bytes(data) if data is not None else path.write_text(text)
        return path

    k["latin1_csv"] = write("latin1.csv", data="image,label,class\nfield_000,1,nucléole\n".encode("latin-1"))
    k["no_class_csv"] = write("noclass.csv", "image,label\nfield_000,1\n")
    k["bad_label_csv"] = write("badlabel.csv", "image,label,class\nfield_000,one,er\n")
    k["other_images_csv"] = write("other.csv", "\n".join([rows[0]] + [r.replace("field_000", "plate3_A01") for r in rows[1:]]))
    k["single_cell_csv"] = write("single.csv", "image,label,class\nfield_000,1,er\nfield_000,2,er\nfield_000,3,golgi\n")
    k["one_class_csv"] = write("oneclass.csv", "image,label,class\nfield_000,1,er\nfield_000,2,er\n")
    rng = np.random.default_rng(0)
    nan = np.ones((2, 64, 64), np.float32)
    nan[0, 3, 3] = np.nan
    tifffile.imwrite(files / "nan.tif", nan)
    tifffile.imwrite(files / "zero.tif", np.zeros((2, 64, 64), np.float32))
    tifffile.imwrite(files / "odd.tif", rng.integers(1, 1000, (3, 4, 64, 64)).astype(np.uint16),
                     photometric="minisblack")
    tifffile.imwrite(files / "empty.tif", rng.normal(100, 2, (2, 128, 128)).astype(np.uint16))
    tifffile.imwrite(files / "small_labels.tif", np.ones((100, 100), np.int32))
    tifffile.imwrite(files / "huge.tif", shape=(20000, 20000), dtype="uint16")  # headers only: sparse
    tifffile.imwrite(files / "deep.tif", shape=(200, 16000, 16000), dtype="uint16", photometric="minisblack",
                     metadata={"axes": "ZYX"})  # 100 GB declared, more than any free memory
    png_header_only(files / "huge.png", 20000, 20000)
    write("garbage.tif", "not an image at all\n" * 10)
    write("broken.pth", "not a checkpoint at all" * 10)
    logistic = {"kind": "logistic", "class_names": ["a", "b"], "params": {}, "input_dim": 4}
    mlp = {"kind": "mlp", "class_names": ["a", "b"], "params": {"hidden": [90_000, 90_000]}, "input_dim": 200_000}
    mlp_tensors = {"scaler_mean": np.zeros(4, np.float32), "scaler_scale": np.ones(4, np.float32),
                   **{f"net.{i}.{p}": np.zeros(2, np.float32) for i in (0, 3, 6) for p in ("weight", "bias")}}
    bundle_file(files / "wide.dinoloc", mlp, mlp_tensors)
    bundle_file(files / "input_size.dinoloc", logistic, small_logistic(), input_size=100_000)
    bundle_file(files / "crop_size.dinoloc", logistic, small_logistic(), crop_size=10**9)
    bundle_file(files / "er_model.dinoloc", logistic, small_logistic(), stains=["protein", "er"])
    header = json.dumps({"__metadata__": {"dinoloc": "{}"}, "head.weight": {
        "dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]}}).encode()
    write("oversized.dinoloc", data=len(header).to_bytes(8, "little") + header + b"\0" * 64)
    write("truncated.dinoloc", data=k["model"].read_bytes()[: k["model"].stat().st_size // 2])
    torch.save({"a": torch.zeros(2)}, files / "torch.dinoloc")
    tiny_weights_with_spec(files / "w_huge.safetensors", arch_kwargs={"embed_dim": 16384, "depth": 48})
    tiny_weights_with_spec(files / "w_large.safetensors", arch_kwargs={"embed_dim": 4096, "depth": 64, "num_heads": 64})
    for i, arch in enumerate(HUB_NAMES):
        tiny_weights_with_spec(files / f"w_arch{i}.safetensors", arch=arch)
    torch.save({"patch_embed.proj.weight": torch.zeros(2048, 3, 16, 16), "blocks.0.mlp.fc1.weight": torch.zeros(8192, 1),
                "blocks.63.norm1.weight": torch.zeros(1), "cls_token": torch.zeros(1, 1, 2048)}, files / "blocks.pth")
    torch.save({"x": _System(root / "pickle_ran")}, files / "system.pth")
    torch.save({"x": _Eval()}, files / "eval.pth")
    (root / "a_file").write_text("I am a file, not a folder\n")
    k["files"] = files
    return k


HUB_NAMES = ["hf-hub:someone/model", "timm/vit_small_patch16_224.dino", "local-dir:/tmp/x", "not_a_timm_model", ""]


def cases(k: dict) -> dict:
    """name -> (arguments, folders to create in the run's folder first, words the message must hold)."""
    f, img, lab = k["files"], k["img"], k["lab"]
    one = [img, "--labels", lab]
    embed = ["embed", *one, *TINY]
    predict = ["predict", *one, "--channels", "nucleus=0,protein=1"]
    train = ["train", *one, *TINY, "--head", "logistic"]
    weights = ["embed", *one, "--channels", "nucleus=0,protein=1", "--crop-size", "64", "--backbone", "checkpoint",
               "--out", "e.npz", "--weights"]
    table = {
        # outputs (checked before the work)
        "embed --out is a folder": (embed + ["--out", "out"], ["out"], ["existing folder"]),
        "predict --out is a folder": (predict + ["--model", k["model"], "--out", "out"], ["out"], ["existing folder"]),
        "train --out names a folder": (train + ["--annotations", k["csv"], "--out", "m"], ["m.dinoloc"], ["existing folder"]),
        "segment --out-dir is a file": (["segment", *one, "--channels", "nucleus=0,protein=1", "--out-dir", k["root"] / "a_file" / "x"],
                                        [], ["a_file"]),
        "evaluate --out-dir under a file": (["evaluate", *one, *TINY, "--annotations", k["csv"], "--out-dir", k["root"] / "a_file" / "r"],
                                            [], ["a_file"]),
        "finetune --out is a folder": (["finetune", *one, *TINY, "--annotations", k["csv"], "--out", "m.dinoloc"],
                                       ["m.dinoloc"], ["existing folder"]),
        # annotation files
        "annotations not UTF-8": (train + ["--annotations", k["latin1_csv"], "--out", "m"], [], ["not UTF-8"]),
        "annotations without class column": (train + ["--annotations", k["no_class_csv"], "--out", "m"], [], ["class"]),
        "annotation label not a number": (train + ["--annotations", k["bad_label_csv"], "--out", "m"], [], ["'one'"]),
        "annotations name other images": (train + ["--annotations", k["other_images_csv"], "--out", "m"], [],
                                          ["plate3_A01", "field_000"]),
        "annotated class with one cell": (train + ["--annotations", k["single_cell_csv"], "--out", "m"], [], ["golgi"]),
        "annotations of one class": (train + ["--annotations", k["one_class_csv"], "--out", "m"], [], ["one class"]),
        "annotation file missing": (train + ["--annotations", f / "nope.csv", "--out", "m"], [], ["nope.csv"]),
        # memory
        "crop size beyond memory": (["embed", *one, "--backbone", "random-tiny", "--crop-size", "100000",
                                     "--channels", "nucleus=0,protein=1", "--out", "e.npz"], [], ["100000"]),
        "20000 px TIFF": (["embed", f / "huge.tif", *TINY, "--out", "e.npz"], [], ["too large"]),
        "20000 px PNG": (["segment", f / "huge.png", "--out-dir", "cells"], [], ["too large"]),
        "image beyond free memory": (["embed", f / "deep.tif", "--backbone", "random-tiny", "--out", "e.npz"], [], ["GB"]),
        # model bundles
        "bundle head claiming 200000 inputs": (predict + ["--model", f / "wide.dinoloc", "--out", "p.csv"], [], ["wide.dinoloc"]),
        "bundle input size 100000": (predict + ["--model", f / "input_size.dinoloc", "--out", "p.csv"], [], ["input size"]),
        "bundle crop size 1e9": (predict + ["--model", f / "crop_size.dinoloc", "--out", "p.csv"], [], ["crop size"]),
        "bundle tensor larger than file": (predict + ["--model", f / "oversized.dinoloc", "--out", "p.csv"], [], ["not a complete"]),
        "bundle cut in half": (predict + ["--model", f / "truncated.dinoloc", "--out", "p.csv"], [], ["truncated.dinoloc"]),
        "torch pickle as bundle": (predict + ["--model", f / "torch.dinoloc", "--out", "p.csv"], [], ["PyTorch/pickle"]),
        "bundle needs a missing stain": (predict + ["--model", f / "er_model.dinoloc", "--out", "p.csv"], [], ["er"]),
        "--backbone disagrees with --model": (predict + ["--model", k["model"], "--backbone", "random", "--out", "p.csv"], [],
                                              ["random-tiny"]),
        # backbone weights
        "weights claiming embed_dim 16384": (weights + [f / "w_huge.safetensors"], [], ["16384"]),
        "weights claiming a large model": (weights + [f / "w_large.safetensors"], [], ["million weights"]),
        "checkpoint claiming 64 blocks": (weights + [f / "blocks.pth"], [], ["million weights"]),
        **{f"weights naming {arch or 'no'} architecture": (weights + [f / f"w_arch{i}.safetensors"], [], ["timm architecture"])
           for i, arch in enumerate(HUB_NAMES)},
        "pickle running os.system": (weights + [f / "system.pth"], [], ["code-bearing", "system"]),
        "pickle running eval": (weights + [f / "eval.pth"], [], ["code-bearing", "eval"]),
        "corrupt checkpoint": (weights + [f / "broken.pth"], [], ["broken.pth"]),
        # images
        "image with NaN": (["segment", f / "nan.tif", "--channels", "nucleus=0,protein=1", "--out-dir", "cells"], [], ["NaN"]),
        "all-zero image": (["segment", f / "zero.tif", "--channels", "nucleus=0,protein=1", "--out-dir", "cells"], [], ["0"]),
        "unknown channel layout": (["segment", f / "odd.tif", "--channels", "nucleus=0,protein=1", "--out-dir", "cells"], [], ["axis"]),
        "image without cells": (["segment", f / "empty.tif", "--channels", "nucleus=0,protein=1", "--out-dir", "cells"], [], ["cell"]),
        "not an image": (["embed", f / "garbage.tif", *TINY, "--out", "e.npz"], [], ["garbage.tif"]),
        "image not found": (["embed", f / "nope.tif", *TINY, "--out", "e.npz"], [], ["nope.tif"]),
        "label image of wrong shape": (["embed", img, "--labels", f / "small_labels.tif", *TINY, "--out", "e.npz"], [], ["100"]),
        "label images not one per image": (["embed", img, k["img1"], "--labels", lab, *TINY, "--out", "e.npz"], [], ["label image"]),
        # usage
        "unknown head": (train + ["--annotations", k["csv"], "--out", "m", "--head", "forest"], [], ["forest"]),
        "unknown backbone": (["embed", *one, "--backbone", "vit-huge", "--out", "e.npz"], [], ["vit-huge"]),
        "negative crop size": (embed + ["--crop-size", "-3", "--out", "e.npz"], [], ["positive"]),
        "missing --out": (embed, [], ["--out"]),
        # no network: a hub backbone's weights are not cached (the default, dinoloc-cells, ships in the package)
        "offline hub backbone": (["embed", *one, "--channels", "nucleus=0,protein=1", "--backbone", "dino-vits16",
                                  "--out", "e.npz"], [], ["No network", "dinoloc-cells"]),
    }
    return table


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    kit = make_kit(root)
    table = cases(kit)

    def one(item):
        name, (args, folders, _) = item
        cwd = root / "runs" / name.replace(" ", "_").replace("/", "_")
        for folder in folders:
            (cwd / folder).mkdir(parents=True)
        cwd.mkdir(parents=True, exist_ok=True)
        before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
        outcome = run_cli(args, cwd, {"HF_HUB_OFFLINE": "1"})
        outcome["left"] = sorted(set(p.relative_to(cwd) for p in cwd.rglob("*")) - set(before))
        return name, outcome

    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = dict(pool.map(one, table.items()))
    return {"kit": kit, "table": table, "outcomes": outcomes}


def clean(outcome: dict, words=()) -> list[str]:
    """What is wrong with a refusal (empty: exit 2, one error line, no traceback, nothing written, < 2 GB)."""
    err = outcome["err"].strip()
    problems = []
    if outcome["code"] != 2:
        problems.append(f"exit status {outcome['code']}")
    if "Traceback" in err or "Retry" in err or "retry" in err:
        problems.append("traceback or retry lines")
    errors = [line for line in err.splitlines() if line.startswith("dinoloc: error: ")]
    if len(errors) != 1 or not err.splitlines()[-1].startswith("dinoloc: error: "):
        problems.append("not one error line at the end")
    problems += [f"message lacks {w!r}" for w in words if not any(w in line for line in errors)]
    if outcome["left"]:
        problems.append(f"left {outcome['left']}")
    if outcome["rss_kb"] > MEMORY_LIMIT_KB:
        problems.append(f"peak memory {outcome['rss_kb'] // 1024} MB")
    return problems


def test_every_hostile_input_ends_with_one_clean_line(results):
    failures = {name: clean(outcome, results["table"][name][2]) for name, outcome in results["outcomes"].items()}
    failures = {name: (problems, results["outcomes"][name]["err"][-600:]) for name, problems in failures.items() if problems}
    assert not failures, failures
    assert len(results["outcomes"]) >= 45


def test_no_crafted_pickle_ran(results):
    assert not (results["kit"]["root"] / "pickle_ran").exists()


def test_errors_only_go_to_stderr_and_stdout_is_empty(results):
    assert all(not o["out"].strip() for o in results["outcomes"].values())


def test_annotation_names_that_match_nothing_name_the_expected_images(results):
    err = results["outcomes"]["annotations name other images"]["err"]
    assert "'plate3_A01'" in err and "'field_000'" in err  # what the file says, what the images are called


def test_argparse_errors_are_one_line_with_exit_2(results):
    for name in ("unknown head", "unknown backbone", "negative crop size", "missing --out"):
        err = results["outcomes"][name]["err"].strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dinoloc: error: ") and "usage:" not in err[0], err


# ---- a damaged cache is not an error: recomputed, one warning line ----------------------------------------
@pytest.mark.parametrize("damage", ["json list", "wrong width", "nan"])
def test_damaged_cache_entry_is_one_warning_line_and_recomputed(results, tmp_path, damage):
    kit = results["kit"]
    args = ["embed", kit["img"], "--labels", kit["lab"], *TINY, "--out", "e.npz"]
    first = run_cli(args, tmp_path / "run")
    assert first["code"] == 0, first["err"]
    cache = tmp_path / "run.cache"
    meta = next(cache.rglob("*.json"))
    arrays = meta.with_suffix(".npz")
    if damage == "json list":
        meta.write_text("[1, 2, 3]")
    else:
        with np.load(arrays, allow_pickle=False) as stored:
            entry = dict(stored)
        vectors = entry["vectors"]
        entry["vectors"] = vectors[:, :-1] if damage == "wrong width" else np.full_like(vectors, np.nan)
        with open(arrays, "wb") as handle:
            np.savez(handle, **entry)
    expected = np.load(tmp_path / "run" / "e.npz", allow_pickle=False)
    (tmp_path / "run" / "e.npz").unlink()
    again = run_cli(args, tmp_path / "run")
    assert again["code"] == 0, again["err"]
    warnings = [line for line in again["err"].splitlines() if "damaged embedding cache entry" in line]
    assert len(warnings) == 1 and warnings[0].startswith("dinoloc: warning: A damaged embedding cache entry"), again["err"]
    assert "Warning:" not in again["err"] and "warnings.warn" not in again["err"]
    got = np.load(tmp_path / "run" / "e.npz", allow_pickle=False)
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_allclose(got["vectors"], expected["vectors"], rtol=1e-5)  # recomputed, not the damaged entry


def counts(results) -> dict:
    problems = {name: clean(o, results["table"][name][2]) for name, o in results["outcomes"].items()}
    crashes = [n for n, o in results["outcomes"].items() if o["code"] not in (0, 2, 3) or "Traceback" in o["err"]]
    return {"tried": len(problems), "clean": sum(not p for p in problems.values()), "crashes": len(crashes),
            "peak_mb": max(o["rss_kb"] for o in results["outcomes"].values()) // 1024}


def test_counts_for_the_docs(results, capsys):
    numbers = counts(results)
    with capsys.disabled():
        print(f"\nhostile inputs through the command line: {numbers}")
    assert numbers["crashes"] == 0 and numbers["clean"] == numbers["tried"]


if __name__ == "__main__":  # the counts in docs/cli.md: python tests/test_hostile_cli.py
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-k", "counts", "-s"]))
