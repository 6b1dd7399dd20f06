"""dinoloc pretrain: files written, the result loads as a backbone, --resume continues, clear errors."""

from __future__ import annotations

import pytest

from napari_dinoloc.cli import main
from napari_dinoloc.core.backbones import BackboneSpec, load_backbone, register_backbone
from napari_dinoloc.core.pretrain import PretrainSettings, ViewSettings, read_training_checkpoint
from napari_dinoloc.core.stains import NUCLEUS, PROTEIN
from napari_dinoloc.core.workflows import pretraining

TINY_SPEC = register_backbone(BackboneSpec(
    name="test-pretrain-cli-tiny", description="tiny 2-stain ViT for tests", paper="", source="file", arch=None,
    slots=(PROTEIN, NUCLEUS), normalization="self", input_size=32, patch_size=8,
    arch_kwargs={"img_size": 32, "patch_size": 8, "in_chans": 2, "embed_dim": 32, "depth": 2, "num_heads": 2},
))
TINY_SETTINGS = PretrainSettings(out_dim=64, hidden_dim=64, bottleneck_dim=32, batch_size=8, epochs=1, lr=5e-3,
                                 warmup_epochs=1, momentum=0.99, precision="fp32", device="cpu", seed=3,
                                 views=ViewSettings(global_size=32, local_size=16, n_local=2))
IMAGE = ["--channels", "nucleus=0,protein=1"]


@pytest.fixture(autouse=True)
def tiny_model(tmp_path, monkeypatch):
    """'scratch' is the tiny architecture; runs use tiny settings; a private cache."""
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(pretraining, "SCRATCH_SPEC", TINY_SPEC)
    monkeypatch.setattr(pretraining, "BASE_SETTINGS", TINY_SETTINGS)
    monkeypatch.setattr(pretraining, "CROP_SIZE", 32)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("samples")
    assert main(["sample", str(outdir), "--count", "2", "--size", "256"]) == 0
    return outdir


def test_pretrain_writes_a_checkpoint_and_teacher_that_load_as_backbones(samples, tmp_path, capsys):
    out = tmp_path / "runs" / "model.pth"
    images = [str(samples / "field_000.tif"), str(samples / "field_001.tif")]
    assert main(["pretrain", *images, *IMAGE, "--out", str(out), "--epochs", "2", "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    teacher = out.with_suffix(".safetensors")
    assert out.is_file() and teacher.is_file()
    assert f"--backbone checkpoint --weights {teacher}" in captured.out
    state = read_training_checkpoint(out)
    steps = int(state["step"])
    assert steps == int(state["args"].total_steps) >= 2 and len(state["losses"]) == steps
    assert "DINO step 1/" in captured.err  # one line per step in a log
    for weights in (out, teacher):
        backbone = load_backbone("checkpoint", weights=weights, device="cpu")
        assert backbone.embed_dim == 32 and backbone.spec.slots == (PROTEIN, NUCLEUS)
    # resuming a finished run keeps its schedules: nothing more to do
    assert main(["pretrain", *images, *IMAGE, "--out", str(out), "--resume"]) == 0
    assert int(read_training_checkpoint(out)["step"]) == steps  # the run was complete: nothing more to do


def test_resume_continues_a_run_stopped_by_its_time_budget(samples, tmp_path, monkeypatch):
    out = tmp_path / "model.pth"
    images = [str(samples / "field_000.tif")]
    calls = {"n": 0}
    real = pretraining.pretrain_model

    def stop_after_two(*args, on_step=None, **kwargs):  # stands in for the clock: cancel after 2 steps
        from napari_dinoloc.core.progress import CancelToken

        token = CancelToken()

        def step(info):
            calls["n"] += 1
            if info.step >= 2:
                token.cancel()

        return real(*args, on_step=step, cancel=token, keep_on_cancel=True, **kwargs)

    monkeypatch.setattr(pretraining, "pretrain_model", stop_after_two)
    assert main(["pretrain", *images, *IMAGE, "--out", str(out), "--epochs", "6", "--batch-size", "4"]) == 0
    first = read_training_checkpoint(out)
    assert int(first["step"]) == 2 < int(first["args"].total_steps)
    monkeypatch.setattr(pretraining, "pretrain_model", real)
    assert main(["pretrain", *images, *IMAGE, "--out", str(out), "--resume"]) == 0
    second = read_training_checkpoint(out)
    assert int(second["step"]) == int(first["args"].total_steps) > 2
    assert second["losses"][:2] == first["losses"]


@pytest.mark.parametrize("extra, words", [
    (["--start", "no-such-model"], "Unknown starting point"),
    (["--resume"], "does not exist"),
    (["--resume", "--start", "shipped"], "leave out --start"),
])
def test_pretrain_errors_are_one_line(samples, tmp_path, capsys, extra, words):
    code = main(["pretrain", str(samples / "field_000.tif"), *IMAGE, "--out", str(tmp_path / "m.pth"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dinoloc: error:")]
    assert len(lines) == 1 and words in lines[0], err


def test_starting_points_and_probe_classes(tmp_path):
    from napari_dinoloc.core.backbones import CELL_MODEL
    from napari_dinoloc.core.errors import DinolocError

    assert pretraining.starting_point("scratch") == (TINY_SPEC, None)
    assert pretraining.starting_point("shipped") == (CELL_MODEL, None)
    assert pretraining.starting_point("random-tiny") == ("random-tiny", None)
    checkpoint = tmp_path / "run.pth"
    checkpoint.write_bytes(b"x")
    assert pretraining.starting_point(str(checkpoint)) == ("checkpoint", checkpoint)
    with pytest.raises(DinolocError, match="Unknown starting point"):
        pretraining.starting_point("nope")
    # the kNN probe needs 2 cells in each of 2 classes; a class with one cell does not count
    assert pretraining.usable_annotations({1: "a", 2: "a", 3: "b"}) is None
    assert pretraining.usable_annotations({1: "a", 2: "a", 3: "b", 4: "b", 5: "c"}) == {1: "a", 2: "a", 3: "b", 4: "b"}
