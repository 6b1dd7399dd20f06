"""Fine-tuning: repeatable, cancellable without side effects, memory-bounded, reproducible from a bundle."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_dinoloc.core.augment import NO_AUGMENTATION, AugmentSettings, augment_crops, random_symmetry
from napari_dinoloc.core.backbones import load_backbone
from napari_dinoloc.core.embedding import EmbedSettings, embed_cells
from napari_dinoloc.core.errors import Cancelled, DinolocError
from napari_dinoloc.core.finetune import (
    DivergenceWatch, FinetuneSettings, Trainer, apply_finetuned, check_annotations, collect_annotated_cells,
    compare_frozen_vs_finetuned, embed_cell_crops, finetune, finetune_cells, parameter_groups, stratified_split,
)
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.progress import CancelToken
from napari_dinoloc.core.synthetic import make_field

CLASSES = ("nucleoplasm", "cytoplasm", "plasma_membrane")
EMBED = EmbedSettings(crop_size=48, device="cpu")
QUICK = FinetuneSettings(epochs=2, batch_size=8, max_batch=8, patience=5)


@pytest.fixture(scope="module")
def field():
    return make_field(seed=5, shape=(320, 320), classes=CLASSES)


@pytest.fixture(scope="module")
def image(field):
    return make_cell_image(field.image, field.stains, name="fov")


@pytest.fixture(scope="module")
def annotated(field, image):
    return [(image, field.labels, dict(field.cell_class))]


@pytest.fixture
def backbone():
    return load_backbone("random-tiny", device="cpu")


@pytest.fixture(scope="module")
def cells(annotated):
    return collect_annotated_cells(annotated, EMBED.resolved(load_backbone("random-tiny", device="cpu")))


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(torch.as_tensor(np.asarray(a[k])), torch.as_tensor(np.asarray(b[k]))) for k in a)


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


# ---- repeatability -------------------------------------------------------------------------
def test_seeded_cpu_run_repeats_exactly(annotated, backbone):
    first = finetune(annotated, backbone, EMBED, QUICK)
    second = finetune(annotated, backbone, EMBED, QUICK)
    assert len(first.history) == 2
    assert without_times(first.history) == without_times(second.history)
    assert same_state(first.backbone_state, second.backbone_state)
    assert first.weights_hash == second.weights_hash != backbone.weights_hash
    other = finetune(annotated, backbone, EMBED, FinetuneSettings(epochs=2, batch_size=8, max_batch=8, seed=1))
    assert without_times(other.history) != without_times(first.history)


# ---- cancelling ----------------------------------------------------------------------------
def test_cancel_mid_run_raises_and_leaves_the_backbone_untouched(annotated, backbone):
    before = state_of(backbone.model)
    flags = [p.requires_grad for p in backbone.model.parameters()]
    token, steps = CancelToken(), []

    def progress(done, total, what):
        if what.startswith("Fine-tuning"):
            steps.append(done)
            if len(steps) == 3:
                token.cancel()

    with pytest.raises(Cancelled):
        finetune(annotated, backbone, EMBED, FinetuneSettings(epochs=4, batch_size=4, max_batch=4), progress=progress, cancel=token)
    assert len(steps) == 3  # stopped at the next step, not at the end
    assert same_state(before, state_of(backbone.model))
    assert flags == [p.requires_grad for p in backbone.model.parameters()]
    assert not backbone.model.training


def test_training_never_changes_the_backbone_passed_in(cells, backbone):
    before = state_of(backbone.model)
    class_names, y = check_annotations(cells)
    trainer = Trainer(backbone, EMBED.resolved(backbone), FinetuneSettings(level="full"), cells, y, class_names)
    train, val = stratified_split(y, 0.2, seed=0)
    trainer.init_classifier(train, torch.Generator().manual_seed(0))
    trainer.build_optimiser(steps_per_epoch=4)
    trainer.run_epoch(1, train, val, torch.Generator().manual_seed(0))
    assert not same_state(before, trainer.state_dict())  # the copy was trained...
    assert same_state(before, state_of(backbone.model))  # ...the caller's model was not


# ---- augmentations -------------------------------------------------------------------------
def crops_with_background(batch: int = 16, size: int = 12, channels: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    crops = torch.rand(batch, channels, size, size, generator=generator) * 0.8 + 0.1
    crops[:, :, :3, :] = 0.0  # masked background
    return crops


def test_augmentation_never_drops_the_protein_channel():
    crops = crops_with_background()
    stains = ("nucleus", "protein", "er")
    only_dropping = AugmentSettings(symmetries=False, brightness=0, contrast=0, drop_channel_p=1.0, rescale_protein_p=0)
    out = augment_crops(crops, stains, only_dropping, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 1], crops[:, 1])
    zeroed = (out.flatten(2).abs().sum(-1) == 0)
    assert torch.equal(zeroed.sum(dim=1), torch.ones(len(crops), dtype=torch.long))  # exactly one channel per crop
    assert not zeroed[:, 1].any()
    protein_only = augment_crops(crops[:, 1:2], ("protein",), only_dropping, torch.Generator().manual_seed(1))
    assert torch.equal(protein_only, crops[:, 1:2])


def test_augmentation_keeps_shapes_background_and_input():
    crops = crops_with_background()
    kept = crops.clone()
    out = augment_crops(crops, ("nucleus", "protein", "er"), AugmentSettings(rescale_protein_p=1.0), torch.Generator().manual_seed(2))
    assert out.shape == crops.shape and out.dtype == crops.dtype
    assert torch.equal(crops, kept)  # the input is not modified
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    background = (crops == 0).all(dim=1)
    assert int((out == 0).all(dim=1).sum()) >= int(background.sum())  # masked pixels stay zero (moved by symmetries)


def test_symmetries_only_move_pixels_and_repeat_with_the_seed():
    crops = crops_with_background()
    a = random_symmetry(crops, torch.Generator().manual_seed(3))
    b = random_symmetry(crops, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == crops.shape
    assert torch.equal(a.flatten(1).sort(dim=1).values, crops.flatten(1).sort(dim=1).values)
    assert not torch.equal(a, crops)
    assert torch.equal(augment_crops(crops, ("nucleus", "protein", "er"), NO_AUGMENTATION), crops)


# ---- bad input -----------------------------------------------------------------------------
def test_bad_annotations_get_clear_messages(field, image, backbone):
    labels = sorted(field.cell_class)
    with pytest.raises(DinolocError, match="No annotated cells"):
        finetune([(image, field.labels, {})], backbone, EMBED, QUICK)
    with pytest.raises(DinolocError, match="No annotated cells"):
        finetune([(image, field.labels, {10_000: "cytoplasm"})], backbone, EMBED, QUICK)
    with pytest.raises(DinolocError, match="Only one class"):
        finetune([(image, field.labels, {label: "golgi" for label in labels[:4]})], backbone, EMBED, QUICK)
    scarce = {label: "golgi" for label in labels[:4]} | {labels[4]: "centrosome"}
    with pytest.raises(DinolocError, match="'centrosome' \\(1\\)"):
        finetune([(image, field.labels, scarce)], backbone, EMBED, QUICK)
    with pytest.raises(DinolocError, match="level"):
        finetune([(image, field.labels, scarce)], backbone, EMBED, FinetuneSettings(level="everything"))
    with pytest.raises(DinolocError, match="at most 2"):
        finetune([(image, field.labels, dict(field.cell_class))], backbone, EMBED, FinetuneSettings(blocks=3, epochs=1))


def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    train, val = stratified_split(y, 0.2, seed=0)
    assert set(y[train]) == set(y[val]) == {0, 1, 2}
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(y)


# ---- memory: gradient accumulation and out-of-memory ----------------------------------------
def test_gradient_accumulation_matches_one_big_batch(cells, backbone):
    class_names, y = check_annotations(cells)
    trainer = Trainer(backbone, EMBED.resolved(backbone), FinetuneSettings(level="full", max_batch=16), cells, y, class_names)
    assert all(getattr(m, "p", 0.0) == 0.0 for m in trainer.backbone.model.modules() if isinstance(m, torch.nn.Dropout))
    rows = np.arange(12)
    trainer.init_classifier(rows, torch.Generator().manual_seed(0))
    trainer.backbone.model.eval()  # dropout off: the two runs must see the same network
    targets = torch.from_numpy(y[rows])
    crops = cells.crops[rows]

    def gradients(micro_batch: int):
        trainer.micro_batch = micro_batch
        loss, features = trainer.accumulate(crops, targets)
        assert features.shape == (len(rows), trainer.classifier.in_features)
        return loss, [p.grad.clone() for p in trainer._parameters()]

    loss_big, big = gradients(12)
    loss_small, small = gradients(5)  # 5 + 5 + 2 cells
    assert loss_small == pytest.approx(loss_big, rel=1e-5)
    for a, b in zip(big, small):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_out_of_memory_halves_the_micro_batch_and_retries(annotated, backbone, monkeypatch):
    original = Trainer.accumulate

    def small_memory(self, crops, targets):
        if self.micro_batch > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, crops, targets)

    monkeypatch.setattr(Trainer, "accumulate", small_memory)
    result = finetune(annotated, backbone, EMBED, FinetuneSettings(epochs=1, batch_size=8, max_batch=8))
    assert result.metrics["micro_batch"] == 2 and result.history[0]["micro_batch"] == 2


# ---- the result in the normal engine -------------------------------------------------------
def test_finetuned_backbone_reproduces_head_embeddings_and_predictions(annotated, field, image, backbone, tmp_path):
    from napari_dinoloc.core.bundle import load_bundle, save_bundle
    from napari_dinoloc.core.bundle import finetune_bundle

    result = finetune(annotated, backbone, EMBED, QUICK)
    tuned = apply_finetuned(backbone, result)
    assert tuned.weights_hash == result.weights_hash and tuned.model is not backbone.model

    cells = collect_annotated_cells(annotated, EMBED.resolved(backbone))
    used_for_head = embed_cell_crops(tuned, EMBED, cells)
    engine = embed_cells(image, field.labels, tuned, EMBED)
    rows = [int(np.flatnonzero(engine.labels == label)[0]) for _, label in cells.origins]
    np.testing.assert_allclose(engine.vectors[rows], used_for_head, rtol=1e-5, atol=1e-5)
    expected = result.head.predict(used_for_head).predicted_names
    assert list(result.head.predict(engine.vectors[rows]).predicted_names) == list(expected)

    path = save_bundle(finetune_bundle(result, backbone), tmp_path / "tuned.dinoloc")
    bundle = load_bundle(path)
    reloaded = apply_finetuned(load_backbone("random-tiny", device="cpu"), bundle.backbone_state)
    assert reloaded.weights_hash == bundle.weights_hash == result.weights_hash
    again = embed_cells(image, field.labels, reloaded, EMBED)
    np.testing.assert_array_equal(again.vectors, engine.vectors)
    assert np.array_equal(bundle.head.predict_proba(again.vectors), result.head.predict_proba(engine.vectors))


def test_head_level_trains_only_the_head(annotated, backbone):
    result = finetune(annotated, backbone, EMBED, FinetuneSettings(level="head"))
    assert result.backbone_state is None and result.history == []
    assert result.weights_hash == backbone.weights_hash
    assert apply_finetuned(backbone, result) is backbone
    assert 0.0 <= result.metrics["macro_f1"] <= 1.0 and result.metrics["val_cells"] >= len(CLASSES)


def test_head_level_draws_its_own_curve_of_held_out_scores(annotated, backbone):
    result = finetune(annotated, backbone, EMBED, FinetuneSettings(level="head"))
    cells = [row["train_cells"] for row in result.head_curve]
    assert len(cells) >= 2 and cells == sorted(set(cells)) and cells[-1] == result.metrics["train_cells"]
    assert result.head_curve[-1]["val_f1"] == pytest.approx(result.metrics["macro_f1"])  # all cells: the run's score
    assert all(0 <= row["val_f1"] <= 1 and row["val_loss"] > 0 for row in result.head_curve)


# ---- divergence ---------------------------------------------------------------------------------
def test_divergence_rule_five_times_the_first_epoch_two_epochs_in_a_row_or_not_a_number():
    watch = DivergenceWatch()
    losses = (2.0, 10.5, 3.0, 9.0, 10.1)  # one epoch high, back; then 4.5x (not enough), then 5.05x
    assert [watch.update(e, loss) for e, loss in enumerate(losses, 1)] == [False] * 5
    assert watch.update(6, 10.1) and watch.diverged and watch.epoch == 6
    assert "epoch 6" in watch.message(1e-3) and "0.0001 instead of 0.001" in watch.message(1e-3)
    nan = DivergenceWatch()
    assert not nan.update(1, 2.0) and nan.update(2, float("nan")) and "not a number" in nan.message(1e-4)
    assert DivergenceWatch().message(1e-4) == ""


def test_a_learning_rate_that_diverges_stops_early_and_is_never_the_best(cells, backbone):
    from napari_dinoloc.core.workflows.finetuning import FinetuneRun, bundle_of, require_run

    settings = FinetuneSettings(epochs=8, batch_size=8, max_batch=8, patience=10, lr=1.0, head_lr=10.0)
    result = finetune_cells(cells, backbone, EMBED, settings)
    losses = [record["train_loss"] for record in result.history]
    runaway = [r["epoch"] for r in result.history if not r["train_loss"] <= 5 * losses[0]]
    assert result.diverged and result.metrics["diverged"] and result.metrics["stopped_early"]
    assert len(result.history) < settings.epochs and runaway[-2:] == [len(losses) - 1, len(losses)]
    assert result.metrics["best_epoch"] not in runaway
    assert "Lower the learning rate" in result.divergence and "fewer blocks" in result.divergence
    for refuse in (lambda run: bundle_of(run), require_run):  # never saved, never used
        with pytest.raises(DinolocError, match="diverged"):
            refuse(FinetuneRun(result, backbone))


def test_a_loss_that_is_not_a_number_stops_before_changing_the_weights(cells, backbone, monkeypatch):
    real, calls = Trainer.accumulate, []

    def poisoned(self, crops, targets):
        loss, features = real(self, crops, targets)
        calls.append(loss)
        return (float("nan") if len(calls) > 3 else loss), features  # epoch 1 (3 steps) is fine

    monkeypatch.setattr(Trainer, "accumulate", poisoned)
    result = finetune_cells(cells, backbone, EMBED, replace(QUICK, epochs=5))
    assert result.diverged and len(result.history) == 2 and np.isnan(result.history[-1]["train_loss"])
    assert len(calls) == 4  # the epoch ended at the first bad step
    assert result.metrics["best_epoch"] in (0, 1) and "not a number" in result.divergence


def test_on_epoch_reports_every_epoch(annotated, backbone):
    seen = []
    result = finetune(annotated, backbone, EMBED, QUICK, on_epoch=lambda *args: seen.append(args))
    assert [epoch for epoch, _, _ in seen] == [1, 2]
    assert all(np.isfinite(loss) and 0.0 <= f1 <= 1.0 for _, loss, f1 in seen)
    assert result.metrics["best_epoch"] in (0, 1, 2)


def test_full_level_decays_learning_rates_towards_the_input(backbone):
    model = backbone.model
    settings = FinetuneSettings(level="full", lr=1e-3, layer_decay=0.5)
    groups = parameter_groups(model, list(model.parameters()), settings)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert rate[id(model.norm.weight)] == pytest.approx(1e-3)
    assert rate[id(model.blocks[1].attn.qkv.weight)] == pytest.approx(5e-4)
    assert rate[id(model.blocks[0].attn.qkv.weight)] == pytest.approx(2.5e-4)
    assert rate[id(model.patch_embed.proj.weight)] == pytest.approx(1.25e-4)


# ---- comparison and command line ------------------------------------------------------------
def test_compare_frozen_vs_finetuned_scores_both_on_the_same_folds(annotated, backbone):
    comparison = compare_frozen_vs_finetuned(annotated, backbone, EMBED, QUICK, folds=2)
    for evaluation in (comparison.frozen, comparison.finetuned):
        assert evaluation.folds == 2 and evaluation.confusion.shape == (3, 3)
        assert evaluation.n_cells == len(annotated[0][2]) and len(evaluation.fold_macro_f1) == 2
    assert "fine-tuned" in comparison.format_table()
    assert comparison.to_dict()["macro_f1_gain"] == pytest.approx(comparison.gain)


def write_field_files(folder, field) -> None:
    """field_000.tif (nucleus, protein), its label image and cells.csv, as `dinoloc sample` writes them."""
    import tifffile

    tifffile.imwrite(folder / "field_000.tif", field.image, metadata={"axes": "CYX"})
    tifffile.imwrite(folder / "field_000_labels.tif", field.labels.astype(np.int32))
    rows = [f"field_000,{label},{name}" for label, name in sorted(field.cell_class.items())]
    (folder / "cells.csv").write_text("\n".join(["image,label,class", *rows]) + "\n", encoding="utf-8")


def args_list(folder) -> list[str]:
    return ["finetune", str(folder / "field_000.tif"), "--labels", str(folder / "field_000_labels.tif"),
            "--annotations", str(folder / "cells.csv"), "--channels", "nucleus=0,protein=1", "--backbone", "random-tiny",
            "--crop-size", "48", "--device", "cpu", "--train-batch", "8"]


def test_finetune_command_writes_a_bundle_with_the_backbone(field, tmp_path, monkeypatch, capsys):
    from napari_dinoloc.cli import build_parser
    from napari_dinoloc.cli._commands import cmd_finetune
    from napari_dinoloc.core.bundle import load_bundle

    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))
    write_field_files(tmp_path, field)
    args = build_parser().parse_args([*args_list(tmp_path), "--epochs", "1", "--out", str(tmp_path / "tuned")])
    assert cmd_finetune(args) == 0
    bundle = load_bundle(tmp_path / "tuned.dinoloc")
    assert bundle.backbone_state and bundle.extra["finetune"]["level"] == "last-blocks"
    assert bundle.weights_hash.startswith("finetuned:")
    out = capsys.readouterr()
    assert "Macro F1" in out.out and "epoch 1" in out.err

    # A learning rate that diverges: exit non-zero with one line that says what to do, and no file.
    from napari_dinoloc.cli import main

    argv = [*args_list(tmp_path), "--epochs", "6", "--lr", "1.0", "--head-lr", "10", "--out", str(tmp_path / "wild")]
    assert main(argv) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinoloc:")]
    assert len(errors) == 1 and "diverged" in errors[0] and "Lower the learning rate" in errors[0]
    assert not (tmp_path / "wild.dinoloc").exists()


def test_images_with_channels_in_another_order_give_the_same_crops(field, annotated, backbone):
    swapped = make_cell_image(field.image[::-1].copy(), field.stains[::-1], name="swapped")
    embed = EMBED.resolved(backbone)
    one = collect_annotated_cells(annotated, embed)
    both = collect_annotated_cells([*annotated, (swapped, field.labels, dict(field.cell_class))], embed)
    assert both.stains == one.stains and np.array_equal(both.crops[len(one):], one.crops)
    assert both.origins[len(one)][0] == "swapped"


def test_bundles_of_a_backbone_fine_tuned_twice_load_from_the_base_weights(annotated, field, image, backbone, tmp_path):
    from napari_dinoloc.core.bundle import backbone_for_bundle, load_bundle, save_bundle
    from napari_dinoloc.core.bundle import finetune_bundle

    tuned = apply_finetuned(backbone, finetune(annotated, backbone, EMBED, QUICK))
    for level in ("head", "last-blocks"):
        result = finetune(annotated, tuned, EMBED, FinetuneSettings(level=level, epochs=1, batch_size=8, max_batch=8))
        bundle = load_bundle(save_bundle(finetune_bundle(result, tuned), tmp_path / f"{level}.dinoloc"))
        assert bundle.extra["finetune"]["base_weights_hash"] == backbone.weights_hash
        loaded = backbone_for_bundle(bundle, device="cpu")
        assert loaded.weights_hash == result.weights_hash
        vectors = embed_cells(image, field.labels, loaded, EMBED).vectors
        expected = embed_cells(image, field.labels, apply_finetuned(tuned, result) if result.backbone_state else tuned, EMBED).vectors
        np.testing.assert_array_equal(vectors, expected)
