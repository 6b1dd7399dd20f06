"""The command line's side of issue 10: batches that survive one bad image, checks before the long work,
notes and warnings printed as lines, offline in one line, output folders created, progress in logs."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import tifffile

from napari_dinoloc.cli import main
from napari_dinoloc.cli._output import TextProgress
from napari_dinoloc.core import network
from napari_dinoloc.core.batch import RunOptions, Skips, image_jobs
from napari_dinoloc.core.embedding_files import load_embeddings
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.table import read_table

CHANNELS = ["--channels", "nucleus=0,protein=1"]
TINY = ["--backbone", "random-tiny", "--crop-size", "64", *CHANNELS]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit")
    assert main(["sample", str(root), "--count", "2", "--size", "384"]) == 0
    (root / "broken.tif").write_text("not an image\n")
    tifffile.imwrite(root / "blank.tif", np.zeros((2, 64, 64), np.float32))
    model = root / "model.dinoloc"
    assert main([*map(str, ["train", root / "field_000.tif", "--labels", root / "field_000_labels.tif",
                            "--annotations", root / "cells.csv", "--head", "logistic", "--out", model]), *TINY]) == 0
    return root


def paths(kit, *names):
    return [str(kit / name) for name in names]


def embedding_spy(monkeypatch) -> list:
    """Record every embedding the engine starts (the checks must come before the first)."""
    from napari_dinoloc.core.pipeline import Session

    calls = []
    original = Session.compute_embeddings
    monkeypatch.setattr(Session, "compute_embeddings", lambda self, *a, **k: calls.append(self.image.name) or original(self, *a, **k))
    return calls


# ---- item 11: one bad image does not end the batch --------------------------------------------------------
def test_predict_goes_on_past_a_bad_image_lists_it_and_exits_3(kit, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code = main(["predict", *paths(kit, "field_000.tif", "broken.tif", "field_001.tif"),
                 "--model", str(kit / "model.dinoloc"), "--out", str(out), *CHANNELS])
    err = capsys.readouterr().err
    assert code == 3, err
    assert {row["image"] for row in read_table(out)} == {"field_000", "field_001"}
    tail = err.strip().splitlines()
    assert tail[-2].startswith("dinoloc: skipped 1 image(s)") and tail[-1].startswith("  broken.tif: Cannot read")
    assert "Traceback" not in err


def test_embed_and_segment_go_on_past_bad_images(kit, tmp_path, capsys):
    out = tmp_path / "e.npz"
    assert main(["embed", *paths(kit, "blank.tif", "field_000.tif", "broken.tif"), *TINY, "--out", str(out)]) == 3
    assert set(load_embeddings(out)["image"]) == {"field_000"}
    err = capsys.readouterr().err
    assert "dinoloc: skipped 2 image(s)" in err and "  blank.tif: " in err and "  broken.tif: " in err
    assert main(["segment", *paths(kit, "broken.tif", "field_001.tif"), *CHANNELS, "--out-dir", str(tmp_path / "cells")]) == 3
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["field_001_cells.csv", "field_001_cells.tif"]


def test_fail_fast_makes_the_first_bad_image_fatal(kit, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code = main(["predict", *paths(kit, "field_000.tif", "broken.tif"), "--model", str(kit / "model.dinoloc"),
                 "--out", str(out), "--fail-fast", *CHANNELS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines()[-1].startswith("dinoloc: error: Cannot read broken.tif")
    assert not out.exists()


def test_a_batch_of_only_bad_images_is_an_error_in_one_line(kit, tmp_path, capsys):
    code = main(["embed", *paths(kit, "broken.tif", "blank.tif"), *TINY, "--out", str(tmp_path / "e.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("dinoloc: error: None of the 2 images could be used")
    assert not (tmp_path / "e.npz").exists()


def test_skips_in_the_engine_iterator(kit):
    from napari_dinoloc.core.backbones import load_backbone
    from napari_dinoloc.core.batch import iter_embedded_sessions
    from napari_dinoloc.core.embedding import EmbedSettings

    jobs = image_jobs(paths(kit, "broken.tif", "field_000.tif"))
    options = RunOptions(stains="nucleus=0,protein=1", embed=EmbedSettings(crop_size=64))
    skips = Skips()
    sessions = list(iter_embedded_sessions(jobs, options, load_backbone("random-tiny", device="cpu"), skips=skips))
    assert [s.image.name for s in sessions] == ["field_000"]
    assert [s.image for s in skips] == ["broken.tif"] and "Cannot read" in skips[0].reason
    with pytest.raises(DinolocError, match="Cannot read broken.tif"):
        list(iter_embedded_sessions(jobs, options, load_backbone("random-tiny", device="cpu")))  # no skips: as before


# ---- item 10: checks before the long work ----------------------------------------------------------------
def test_annotations_naming_other_images_fail_before_any_cell_is_embedded(kit, tmp_path, monkeypatch, capsys):
    calls = embedding_spy(monkeypatch)
    csv = tmp_path / "plate.csv"
    csv.write_text("image,label,class\nplate3_A01,1,er\nplate3_A01,2,er\nplate3_A01,3,golgi\nplate3_A01,4,golgi\n")
    code = main(["train", *paths(kit, "field_000.tif"), *TINY, "--annotations", str(csv), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "'plate3_A01'" in err and "'field_000'" in err
    assert calls == []


def test_scarce_classes_missing_stains_and_folder_outputs_fail_before_embedding(kit, tmp_path, monkeypatch, capsys):
    calls = embedding_spy(monkeypatch)
    csv = tmp_path / "few.csv"
    csv.write_text("image,label,class\nfield_000,1,er\nfield_000,2,er\nfield_000,3,golgi\n")
    assert main(["train", *paths(kit, "field_000.tif"), *TINY, "--annotations", str(csv), "--out", str(tmp_path / "m")]) == 2
    assert "'golgi' (1)" in capsys.readouterr().err
    (tmp_path / "m.dinoloc").mkdir()  # train --out m writes m.dinoloc: that name is checked, not m
    assert main(["train", *paths(kit, "field_000.tif"), *TINY, "--annotations", str(kit / "cells.csv"), "--out", str(tmp_path / "m")]) == 2
    assert "existing folder" in capsys.readouterr().err
    assert main(["predict", *paths(kit, "field_000.tif"), "--model", str(kit / "model.dinoloc"), "--channels", "protein=1,other=0",
                 "--out", str(tmp_path / "p.csv"), "--fail-fast"]) == 2
    assert "nucleus" in capsys.readouterr().err
    assert calls == []


def test_preflight_is_a_workflow_both_front_ends_can_call(kit, tmp_path):
    from napari_dinoloc.core.workflows.preflight import preflight

    skips = Skips()
    plan = preflight(image_jobs(paths(kit, "field_000.tif", "broken.tif")), RunOptions(stains="nucleus=0,protein=1"),
                     outputs=[tmp_path / "new" / "deeper" / "p.csv"], annotations=kit / "cells.csv", skips=skips)
    assert plan.names == ["field_000"] and [s.image for s in skips] == ["broken.tif"]
    assert (tmp_path / "new" / "deeper").is_dir()  # folders of outputs are created once every check passed


# ---- item 8: what the engine reports is printed -------------------------------------------------------------
def test_annotation_conflicts_and_unknown_cells_are_printed(kit, tmp_path, capsys):
    rows = (kit / "cells.csv").read_text().splitlines()
    first = rows[1].split(",")
    conflicting = ",".join(first[:-1] + ["golgi" if first[-1] != "golgi" else "er"])
    csv = tmp_path / "odd.csv"
    csv.write_text("\n".join(rows + [conflicting, "field_000,999,er", "field_000,998,er"]) + "\n")
    assert main(["train", *paths(kit, "field_000.tif"), "--labels", str(kit / "field_000_labels.tif"), *TINY,
                 "--annotations", str(csv), "--out", str(tmp_path / "m"), "--head", "logistic"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("dinoloc: note: ")]
    assert any("1 cell(s) are given different classes in odd.csv" in line for line in notes), captured.err
    assert any("2 annotated cell(s) do not exist in field_000" in line and "998, 999" in line for line in notes)
    assert f"{tmp_path / 'm.dinoloc'}: logistic head" in captured.out  # the file written, with its suffix
    assert (tmp_path / "m.dinoloc").is_file()


def test_backbone_given_with_model_must_agree(kit, tmp_path, capsys):
    base = ["predict", *paths(kit, "field_000.tif"), "--labels", str(kit / "field_000_labels.tif"), *CHANNELS,
            "--model", str(kit / "model.dinoloc"), "--out", str(tmp_path / "p.csv")]
    assert main(base + ["--backbone", "random"]) == 2
    assert "trained on the backbone 'random-tiny', not 'random'" in capsys.readouterr().err
    assert main(base + ["--backbone", "random-tiny"]) == 0


def test_z_projection_is_printed(tmp_path, capsys):
    from napari_dinoloc.core.synthetic import make_field

    field = make_field(seed=0, shape=(256, 256))
    stack = np.stack([field.image] * 3).astype(np.float32)  # Z, C, Y, X
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "ZCYX"}, photometric="minisblack")
    assert main(["segment", str(path), *CHANNELS, "--out-dir", str(tmp_path / "cells")]) == 0
    err = capsys.readouterr().err
    assert "dinoloc: note: stack: Z axis (3 planes) reduced by maximum projection." in err, err


# ---- item 9: offline ----------------------------------------------------------------------------------------
def test_offline_hub_backbone_ends_at_once_in_one_line(kit, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(network, "hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    start = time.perf_counter()
    code = main(["embed", *paths(kit, "field_000.tif"), "--labels", str(kit / "field_000_labels.tif"), *CHANNELS,
                 "--backbone", "dino-vits16", "--out", str(tmp_path / "e.npz")])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("dinoloc: error: No network"), err
    assert "dinoloc-cells" in err[0]  # the shipped model is named as the alternative
    assert not any("retry" in line.lower() for line in err)
    assert seconds < 20 and not (tmp_path / "e.npz").exists()


def test_offline_the_default_features_and_the_shipped_model_embed_without_retries(kit, tmp_path, monkeypatch, capsys):
    from napari_dinoloc.core import defaults

    monkeypatch.setattr(network, "hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    for name, out in ((None, "default.npz"), ("dinoloc-cells", "shipped.npz")):
        given = ["--backbone", name] if name else []
        code = main(["embed", *paths(kit, "field_000.tif"), "--labels", str(kit / "field_000_labels.tif"), *CHANNELS,
                     *given, "--out", str(tmp_path / out)])
        err = capsys.readouterr().err
        assert code == 0 and "No network" not in err and "retry" not in err.lower()
    with np.load(tmp_path / "shipped.npz") as saved:
        assert saved["vectors"].shape[1] == 192  # the width of dinoloc-cells
    with np.load(tmp_path / "default.npz") as saved, np.load(tmp_path / "shipped.npz") as shipped:
        assert defaults.FEATURES == "dinoloc-cells" or saved["vectors"].shape != shipped["vectors"].shape


def test_offline_demo_runs_on_the_default_features_or_the_shipped_model(tmp_path, monkeypatch, capsys):
    from napari_dinoloc.core import defaults

    monkeypatch.setattr(network, "hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in (None, "dinoloc-cells"):
        given = ["--backbone", name] if name else []
        assert main(["demo", "--headless", str(tmp_path / "demo"), "--size", "384", *given]) == 0
        captured = capsys.readouterr()
        assert "No network" not in captured.err and "random" not in captured.err
        assert f"backbone {name or defaults.FEATURES}" in captured.out
        assert (tmp_path / "demo" / "predictions.csv").is_file()


# ---- item 12: folders, progress -------------------------------------------------------------------------------
def test_output_folders_are_created(kit, tmp_path):
    out = tmp_path / "a" / "b" / "e.npz"
    assert main(["embed", *paths(kit, "field_000.tif"), "--labels", str(kit / "field_000_labels.tif"), *TINY, "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["segment", *paths(kit, "field_000.tif"), *CHANNELS, "--out-dir", str(tmp_path / "c" / "d")]) == 0
    assert (tmp_path / "c" / "d" / "field_000_cells.tif").is_file()


def test_progress_in_a_log_is_one_line_per_step_and_labels_are_whole():
    stream = io.StringIO()  # not a terminal
    progress = TextProgress(stream)
    label = "Embedding cells of a field with a long name"
    for done in range(0, 11):
        progress(done, 10, label)
    progress(0, 2, "Training")
    progress(2, 2, "Training")
    text = stream.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [f"{label}: 0/10", f"{label}: 10/10 done", "Training: 0/2", "Training: 2/2 done"]


def test_progress_on_a_terminal_keeps_the_whole_label():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    TextProgress(stream)(5, 5, "Embedding cells of a field with a long name")
    assert "Embedding cells of a field with a long name [" in stream.getvalue()
