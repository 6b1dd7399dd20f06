"""Self-supervised DINO pretraining: views, schedules, loss, EMA teacher, checkpoints, resume, crop cache."""

from __future__ import annotations

import argparse
import numpy as np
import pytest
import torch

from napari_dinoloc.core.backbones import BACKBONES, BackboneSpec, load_backbone, read_checkpoint, register_backbone
from napari_dinoloc.core.errors import Cancelled
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.pretrain import (
    CELL_MODEL_SPEC, DinoRun, PretrainCells, PretrainSettings, ViewSettings, build_vit, cosine, export_teacher,
    linear_warmup, make_views, pretrain, read_training_checkpoint, resolve_start, to_slots,
    warmup_cosine,
)
from napari_dinoloc.core.pretrain.precision import choose_precision
from napari_dinoloc.core.progress import CancelToken
from napari_dinoloc.core.stains import NUCLEUS, PROTEIN
from napari_dinoloc.core.synthetic import make_field

TINY = register_backbone(BackboneSpec(
    name="test-tiny-cells", description="tiny 2-stain ViT for tests", paper="", source="file", arch=None,
    slots=(PROTEIN, NUCLEUS), normalization="self", input_size=32, patch_size=8,
    arch_kwargs={"img_size": 32, "patch_size": 8, "in_chans": 2, "embed_dim": 32, "depth": 2, "num_heads": 2},
))
TINY_VIEWS = ViewSettings(global_size=32, local_size=16, n_local=2)


def tiny_settings(**changes) -> PretrainSettings:
    values = dict(out_dim=64, hidden_dim=64, bottleneck_dim=32, batch_size=8, epochs=3, lr=5e-3, warmup_epochs=1,
                  momentum=0.99, teacher_temp=0.04, warmup_teacher_temp=0.04, views=TINY_VIEWS, precision="fp32",
                  device="cpu", seed=3)
    values.update(changes)
    return PretrainSettings(**values)


@pytest.fixture(scope="module")
def cells() -> PretrainCells:
    return PretrainCells.from_fields([0, 1, 2], shape=(256, 256), size=40)


def teacher_state(path) -> dict:
    return read_training_checkpoint(path)["teacher"]


# --- schedules -------------------------------------------------------------------------------

def test_schedules_start_and_end_values():
    assert cosine(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine(100, 100, 0.996, 1.0) == 1.0
    assert cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04) and cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert warmup_cosine(0, 100, 10, 5e-4, 1e-6) == 0.0
    assert warmup_cosine(5, 100, 10, 5e-4, 1e-6) == pytest.approx(2.5e-4)
    assert warmup_cosine(10, 100, 10, 5e-4, 1e-6) == pytest.approx(5e-4)
    assert warmup_cosine(100, 100, 10, 5e-4, 1e-6) == pytest.approx(1e-6)
    assert linear_warmup(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(30, 30, 0.04, 0.07) == pytest.approx(0.07)


# --- views -----------------------------------------------------------------------------------

def test_views_count_sizes_and_self_normalisation():
    rng = np.random.default_rng(0)
    crops = rng.integers(1, 255, size=(5, 2, 40, 40), dtype=np.uint8)
    settings = ViewSettings(global_size=32, local_size=16, n_local=3, drop_channel_p=0.0)
    views = make_views(crops, TINY, settings, torch.Generator().manual_seed(0))
    assert len(views) == 5
    assert [tuple(v.shape) for v in views] == [(5, 2, 32, 32)] * 2 + [(5, 2, 16, 16)] * 3
    for view in views:  # per cell, per stain: mean 0, std 1
        assert torch.allclose(view.mean(dim=(-2, -1)), torch.zeros(5, 2), atol=1e-4)
        assert torch.allclose(view.std(dim=(-2, -1), correction=0), torch.ones(5, 2), atol=1e-3)


def test_views_never_mix_stains_and_never_drop_the_protein():
    crops = np.zeros((8, 2, 40, 40), np.uint8)
    crops[:, 1, 10:30, 10:30] = 200  # nucleus only: no colour op may paint the protein slot
    settings = ViewSettings(global_size=32, local_size=16, n_local=2, drop_channel_p=1.0, rescale_protein_p=1.0)
    for view in make_views(crops, TINY, settings, torch.Generator().manual_seed(1)):
        assert torch.count_nonzero(view[:, 0]) == 0
    crops[:, 0, 12:28, 12:28] = 150
    for view in make_views(crops, TINY, settings, torch.Generator().manual_seed(2)):
        assert torch.count_nonzero(view[:, 0].flatten(1), dim=1).min() > 0  # protein kept in every view
        assert torch.count_nonzero(view[:, 1]) == 0  # the only droppable stain, dropped with p = 1


def test_views_repeat_with_the_same_generator():
    crops = np.random.default_rng(0).integers(0, 255, size=(3, 2, 40, 40), dtype=np.uint8)
    a = make_views(crops, TINY, TINY_VIEWS, torch.Generator().manual_seed(7))
    b = make_views(crops, TINY, TINY_VIEWS, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_missing_nucleus_is_zero_filled():
    crops = np.full((2, 1, 8, 8), 9, np.uint8)
    slotted = to_slots(crops, (PROTEIN,), (PROTEIN, NUCLEUS))
    assert slotted.shape == (2, 2, 8, 8) and (slotted[:, 0] == 9).all() and (slotted[:, 1] == 0).all()


# --- training ---------------------------------------------------------------------------------

def test_tens_of_steps_lower_the_dino_loss(cells):
    # A random tiny ViT gives nearly the same features for every cell, so a full DINO run needs far more than
    # tens of steps to leave the near-uniform regime. With the teacher held (momentum 1) and centred on each
    # batch, the loss must fall as the student learns the teacher's targets.
    settings = tiny_settings(epochs=6, momentum=1.0, center_momentum=0.0)
    result = pretrain(cells, settings, start=TINY)
    losses = np.asarray(result.losses)
    assert result.steps == len(losses) >= 20
    assert losses[-5:].mean() < losses[1:4].mean() - 0.1  # step 0 has no centre yet


def test_checkpoint_has_dino_layout_and_loads_as_the_teacher_backbone(cells, tmp_path):
    path = tmp_path / "checkpoint.pth"
    result = pretrain(cells, tiny_settings(epochs=1), start=TINY, checkpoint_path=path)
    assert result.checkpoint == path and path.is_file()
    state = read_training_checkpoint(path)
    assert {"student", "teacher", "optimizer", "epoch", "args"} <= set(state)
    assert isinstance(state["args"], argparse.Namespace) and state["args"].out_dim == 64
    assert all(k.startswith(("backbone.", "head.")) for k in state["student"])
    assert any(k.startswith("head.last_layer") for k in state["teacher"])
    backbone_state = read_checkpoint(path)  # the registry's safe reader: teacher, no head
    assert not any(k.startswith("head.") for k in backbone_state)
    teacher = state["teacher"]
    assert torch.equal(backbone_state["cls_token"], teacher["backbone.cls_token"])
    assert not torch.equal(teacher["backbone.cls_token"], state["student"]["backbone.cls_token"])

    loaded = load_backbone(TINY.name, weights=path, device="cpu")
    reference = build_vit(TINY)
    reference.load_state_dict({k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")})
    x = torch.randn(3, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), reference.eval()(x), atol=1e-6)

    shipped = tmp_path / "teacher.safetensors"
    run = DinoRun(cells, tiny_settings(), TINY, build_vit(TINY), torch.device("cpu"))
    run.restore(state)
    export_teacher(run.teacher, TINY, shipped)
    again = load_backbone(TINY.name, weights=shipped, device="cpu")
    with torch.no_grad():
        assert torch.allclose(again.model(x), loaded.model(x), atol=1e-6)


def test_resumed_run_reaches_the_state_of_an_uninterrupted_run(cells, tmp_path):
    settings = tiny_settings(epochs=3)
    whole = tmp_path / "whole.pth"
    full = pretrain(cells, settings, start=TINY, checkpoint_path=whole)

    part = tmp_path / "part.pth"
    token = CancelToken()

    def stop_after_four(info):
        if info.step == 4:
            token.cancel()

    with pytest.raises(Cancelled):
        pretrain(cells, settings, start=TINY, checkpoint_path=part, cancel=token, on_step=stop_after_four)
    assert read_training_checkpoint(part)["step"] == 4
    resumed = pretrain(cells, settings, checkpoint_path=part, resume=True)
    assert resumed.steps == full.steps and full.steps > 4
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-5, atol=1e-6)
    a, b = read_training_checkpoint(whole), read_training_checkpoint(part)
    for key in ("teacher", "student"):
        for name, value in a[key].items():
            assert torch.allclose(value, b[key][name], atol=1e-5), (key, name)
    assert torch.allclose(a["dino_loss"]["center"], b["dino_loss"]["center"], atol=1e-6)


def test_cancel_keeps_the_last_checkpoint_loadable(cells, tmp_path):
    path = tmp_path / "run.pth"
    pretrain(cells, tiny_settings(epochs=1), start=TINY, checkpoint_path=path)
    before = path.read_bytes()
    token = CancelToken()
    token.cancel()  # cancelled before the first step: nothing new to keep, the old file stays as it was
    with pytest.raises(Cancelled):
        pretrain(cells, tiny_settings(epochs=1), start=TINY, checkpoint_path=path, cancel=token)
    assert path.read_bytes() == before
    assert load_backbone(TINY.name, weights=path, device="cpu").embed_dim == 32


def test_ema_teacher_follows_the_cosine_momentum_schedule(cells, tmp_path):
    seen = []
    settings = tiny_settings(epochs=4, momentum=0.99)
    result = pretrain(cells, settings, start=TINY, on_step=seen.append)
    total = result.total_steps
    assert [round(i.momentum, 10) for i in seen] == [round(cosine(s, total, 0.99, 1.0), 10) for s in range(total)]
    assert seen[0].momentum == pytest.approx(0.99) and seen[-1].momentum > 0.999

    # step by hand: teacher = m * previous teacher + (1 - m) * updated student (step 0 has lr 0: warm-up)
    _, initial = resolve_start(TINY, seed=settings.seed)
    run = DinoRun(cells, settings, TINY, initial, torch.device("cpu"))
    run.plan(total)
    name = "backbone.blocks.0.attn.qkv.weight"
    for _ in range(3):
        before = run.teacher.state_dict()[name].clone()
        info = run.train_step()
        student, teacher = run.student.state_dict()[name], run.teacher.state_dict()[name]
        assert torch.allclose(teacher, info.momentum * before + (1 - info.momentum) * student, atol=1e-7)
    assert (teacher - student).abs().max() > 1e-5


def test_last_layer_is_frozen_during_the_first_epoch(cells):
    settings = tiny_settings(epochs=3, freeze_last_layer_epochs=1)
    run = DinoRun(cells, settings, TINY, build_vit(TINY), torch.device("cpu"))
    run.plan(3 * run.steps_per_epoch)
    last = run.student.head.last_layer.weight
    first = last.detach().clone()
    mlp = run.student.head.mlp[0].weight.detach().clone()
    for _ in range(run.steps_per_epoch):
        assert run.train_step().last_layer_frozen
    assert torch.equal(last.detach(), first)
    assert not torch.equal(run.student.head.mlp[0].weight.detach(), mlp)
    assert not run.train_step().last_layer_frozen
    assert not torch.equal(last.detach(), first)


def test_time_budget_stops_the_run():
    cells = PretrainCells.from_arrays(np.random.default_rng(0).random((8, 2, 40, 40)))
    result = pretrain(cells, tiny_settings(epochs=10_000, minutes=1e-4, batch_size=4), start=TINY)
    assert result.stopped == "time" and result.steps < result.total_steps


# --- data ------------------------------------------------------------------------------------

def test_crop_cache_is_reused_without_segmenting_again(tmp_path):
    fields = [make_field(seed=s, shape=(192, 192)) for s in (4, 5)]
    images = [make_cell_image(f.image, f.stains, name=f"field-{i}") for i, f in enumerate(fields)]
    truth = {image.content_hash: f.labels for image, f in zip(images, fields)}
    calls = []

    def segment(image):
        calls.append(image.name)
        return truth[image.content_hash]

    first = PretrainCells.from_images(images, tmp_path / "cache", size=32, segment=segment)
    assert len(calls) == 2 and len(first) > 4 and first.stains == (PROTEIN, NUCLEUS)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    second = PretrainCells.from_images(images, tmp_path / "cache", size=32, segment=segment)
    assert len(calls) == 2  # no second segmentation
    np.testing.assert_array_equal(first.batch(np.arange(len(first))), second.batch(np.arange(len(second))))
    crops = first.batch(np.arange(len(first)))
    assert crops.dtype == np.uint8 and crops.shape[1:] == (2, 32, 32)
    assert (crops[:, :, 0, 0] == 0).all()  # background outside the cell is masked


def test_image_without_cells_is_skipped_with_a_message(tmp_path):
    field = make_field(seed=6, shape=(160, 160))
    good = make_cell_image(field.image, field.stains, name="good")
    noise = np.random.default_rng(0).integers(0, 50, (2, 64, 64)).astype(np.uint16)
    empty = make_cell_image(noise, field.stains, name="empty")
    said = []
    cells = PretrainCells.from_images([empty, good], tmp_path, size=32, say=said.append)
    assert cells.summary()["images"] == 1 and any("empty" in line for line in said)


# --- precision and the shipped architecture ---------------------------------------------------

def test_precision_is_measured_on_cpu_and_the_faster_kept():
    assert choose_precision("auto", "cpu", {"fp32": 1.0, "bf16": 7.0}.get)[0] == "fp32"
    assert choose_precision("auto", "cpu", {"fp32": 2.0, "bf16": 1.0}.get)[0] == "bf16"
    assert choose_precision("fp32", "cpu", lambda p: 1 / 0)[0] == "fp32"


def test_shipped_cell_model_is_small_and_registers():
    spec = BACKBONES["dinoloc-cells"]
    assert spec is CELL_MODEL_SPEC and spec.source == "package"
    assert spec.slots == (PROTEIN, NUCLEUS) and spec.normalization == "self" and spec.patch_size == 8
    model = build_vit(CELL_MODEL_SPEC)
    params = sum(p.numel() for p in model.parameters())
    assert 2_000_000 < params < 4_000_000
    assert model(torch.zeros(1, 2, 64, 64)).shape == (1, 192)


def test_starts_from_a_registered_backbone_or_a_weights_file(cells, tmp_path):
    path = tmp_path / "rgb.pth"
    result = pretrain(cells, tiny_settings(epochs=1), start="random-tiny", checkpoint_path=path)
    assert result.steps >= 1
    loaded = load_backbone("checkpoint", weights=path, device="cpu")  # 3 slots: read as an RGB ViT
    assert loaded.spec.slots == load_backbone("random-tiny", device="cpu").spec.slots and loaded.embed_dim == 64

    first = tmp_path / "first.pth"
    pretrain(cells, tiny_settings(epochs=1), start=TINY, checkpoint_path=first)
    spec, model = resolve_start(TINY, weights=first)
    expected = read_checkpoint(first)
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
