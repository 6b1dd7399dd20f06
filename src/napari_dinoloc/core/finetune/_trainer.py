"""Training a backbone on the annotated cells: the Trainer (one run on a deep copy of the backbone),
early stopping, which parameters train at what rate, and the seeded, memory-aware machinery around it."""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np

from ..augment import augment_crops
from ..backbones import numpy_state
from ..embedding import EmbedSettings, Embedder, join_views, pool_tokens
from ..errors import DinolocError
from ..evaluation import macro_f1
from ..heads import make_head
from ..progress import check_cancel, report
from ._cells import CellSet
from ._divergence import DivergenceWatch
from ._settings import FinetuneSettings

WARMUP_EPOCHS = 1  # linear learning-rate warm-up: the first steps see the largest, least reliable gradients
CLIP_NORM = 1.0  # gradient-norm clip: the probe's confident logits can give huge first gradients
PROBE_HEAD = "logistic"  # the classifier starts from a linear probe: its weight and bias become the layer's


class Trainer:
    """One fine-tuning run: a deep copy of the backbone, a classifier, an optimiser, a seeded generator."""

    def __init__(self, backbone, embed_settings: EmbedSettings, settings: FinetuneSettings, cells: CellSet,
                 y: np.ndarray, class_names: Sequence[str]):
        self.settings, self.cells, self.y, self.class_names = settings, cells, y, tuple(class_names)
        self.device = _training_device(backbone, settings.device)
        model = copy.deepcopy(backbone.model).to(self.device)  # never train the caller's model
        self.backbone = replace(backbone, model=model, device=self.device)
        # fp32 while training: validation scores must not depend on an autocast decision
        self.embedder = Embedder(self.backbone, replace(embed_settings, precision="fp32"))
        self.trainable = set_trainable(model, settings.level, settings.blocks)
        self.micro_batch = settings.max_batch
        self.classifier = None  # torch.nn.Linear on standardised features, made by init_classifier
        self.feature_mean = self.feature_scale = None
        self.frozen_features = None  # (features, classes) of the training cells before any training
        self.optimiser = self.schedule = None

    # -- the model ------------------------------------------------------------------------------
    def features(self, crops: np.ndarray):
        """(B, D) pooled embeddings with gradients: the same preparation and pooling as the Embedder."""
        prepared = self.embedder.prepare(crops, self.cells.stains)
        tokens = self.backbone.tokens(prepared.inputs.to(self.device))
        pooled = pool_tokens(tokens, self.embedder.settings.embedding, self.backbone.num_prefix_tokens,
                             prepared.inputs.shape[1])
        return join_views(pooled, prepared)

    def classify(self, features):
        return self.classifier((features - self.feature_mean) / self.feature_scale)

    def init_classifier(self, train: np.ndarray, generator, cancel=None) -> None:
        """A linear layer started from the logistic probe on frozen embeddings of augmented training cells.

        Augmented, as the training batches are: a probe fitted on clean crops is over-confident on
        augmented ones, and its huge first losses would wreck the features. These features are also
        epoch 0 of the early-stopping probe, so every epoch is scored the same way."""
        import torch

        frozen = self.embed(train, cancel, generator)
        self.frozen_features = (frozen, self.y[train])
        tensors, _ = self.fit_probe(frozen, self.y[train]).to_state()
        self.classifier = torch.nn.Linear(frozen.shape[1], len(self.class_names))
        with torch.no_grad():
            self.classifier.weight.copy_(torch.from_numpy(tensors["weight"]))
            self.classifier.bias.copy_(torch.from_numpy(tensors["bias"]))
        self.classifier.to(self.device)
        # the probe's standardisation stays fixed: it keeps the linear layer well conditioned
        self.feature_mean = torch.from_numpy(tensors["scaler_mean"]).to(self.device)
        self.feature_scale = torch.from_numpy(tensors["scaler_scale"]).to(self.device)

    def fit_probe(self, features: np.ndarray, y: np.ndarray):
        return make_head(PROBE_HEAD, self.class_names, seed=self.settings.seed).fit_encoded(features, y, self.class_names)

    def embed(self, rows: np.ndarray, cancel=None, generator=None) -> np.ndarray:
        """Embeddings of the given cells in eval mode, ``micro_batch`` at a time; augmented if a generator is given."""
        import torch

        self.backbone.model.eval()
        parts = []
        for start in range(0, len(rows), self.micro_batch):
            check_cancel(cancel)
            crops = self.cells.crops[rows[start:start + self.micro_batch]]
            if generator is not None:
                crops = augment_crops(torch.from_numpy(crops), self.cells.stains, self.settings.augment, generator).numpy()
            parts.append(self.embedder.embed_batch(crops, self.cells.stains))
        return np.concatenate(parts)

    # -- optimisation ---------------------------------------------------------------------------
    def build_optimiser(self, steps_per_epoch: int) -> None:
        import torch

        groups = parameter_groups(self.backbone.model, self.trainable, self.settings)
        groups += [{"params": list(self.classifier.parameters()), "lr": self.settings.head_lr, "weight_decay": 0.0}]
        self.optimiser = torch.optim.AdamW(groups, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        schedule = warmup_cosine(WARMUP_EPOCHS * steps_per_epoch, self.settings.epochs * steps_per_epoch)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, schedule)

    def accumulate(self, crops: np.ndarray, targets) -> tuple[float, np.ndarray]:
        """Gradients of the mean loss over ``crops``, summed over micro-batches of ``micro_batch`` cells.
        Returns the loss and the cells' features (for the validation probe)."""
        import torch.nn.functional as F

        for parameter in self._parameters():
            parameter.grad = None
        total, features = 0.0, []
        for start in range(0, len(crops), self.micro_batch):
            part = slice(start, start + self.micro_batch)
            pooled = self.features(crops[part])
            loss = F.cross_entropy(self.classify(pooled), targets[part], reduction="sum") / len(crops)
            loss.backward()
            total += float(loss.detach())
            features.append(pooled.detach().float().cpu().numpy())
        return total, np.concatenate(features)

    def step(self, crops: np.ndarray, targets) -> tuple[float, np.ndarray]:
        """One optimiser step; on out-of-memory the micro-batch is halved and the step retried."""
        import torch

        while True:
            try:
                loss, features = self.accumulate(crops, targets)
                break
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                self._shrink_micro_batch(exc)
        if not math.isfinite(loss):
            return loss, features  # diverged: no step, the weights stay as they were
        torch.nn.utils.clip_grad_norm_(self._parameters(), CLIP_NORM)
        self.optimiser.step()
        self.schedule.step()
        return loss, features

    def _shrink_micro_batch(self, exc: BaseException) -> None:
        if self.micro_batch <= 1:
            raise DinolocError("Out of memory even with one cell per pass: fine-tune fewer blocks, use a smaller "
                               "input size, or run on the CPU (--device cpu).") from exc
        self.micro_batch = max(1, self.micro_batch // 2)
        _free_device_memory(self.device)

    def _parameters(self):
        return [p for p in self.trainable] + list(self.classifier.parameters())

    # -- epochs ---------------------------------------------------------------------------------
    def fit(self, train, val, progress=None, cancel=None, on_epoch=None) -> tuple[list[dict], dict]:
        """Train with early stopping on validation macro-F1; the best epoch's weights are kept
        (epoch 0, the untouched backbone, included: fine-tuning never ends worse on validation).
        A run whose loss runs away stops (``DivergenceWatch``), and its runaway epochs are never the best."""
        import torch

        watch = DivergenceWatch()
        with seeded(self.settings.seed, self.device):
            generator = torch.Generator().manual_seed(self.settings.seed)
            self.init_classifier(train, generator, cancel)
            self.build_optimiser(math.ceil(len(train) / self.settings.batch_size))
            start = self.validate(val, *self.frozen_features)
            best = EarlyStopping(self.settings.patience, start["val_f1"], start["val_loss"], self.snapshot())
            history = []
            for epoch in range(1, self.settings.epochs + 1):
                record = self.run_epoch(epoch, train, val, generator, progress, cancel)
                history.append(record)
                if on_epoch is not None:
                    on_epoch(epoch, record["train_loss"], record["val_f1"])
                if watch.update(epoch, record["train_loss"]):
                    break
                if best.update(epoch, record["val_f1"], record["val_loss"], self.snapshot,
                               eligible=not watch.runs_away(record["train_loss"])):
                    break
            self.restore(best.snapshot)
        self.backbone.model.eval()
        return history, {"initial_val_f1": best.initial_f1, "best_val_f1": best.f1, "best_epoch": best.epoch,
                         "epochs_run": len(history), "stopped_early": len(history) < self.settings.epochs,
                         "micro_batch": self.micro_batch, "diverged": watch.diverged,
                         "divergence": watch.message(self.settings.lr)}

    def run_epoch(self, epoch, train, val, generator, progress=None, cancel=None) -> dict:
        import torch

        began = time.perf_counter()
        self.backbone.model.train()
        self.classifier.train()
        order = balanced_order(self.y[train], generator)
        batches = [train[order[i:i + self.settings.batch_size]] for i in range(0, len(order), self.settings.batch_size)]
        losses, features, used = [], [], []
        for number, rows in enumerate(batches, start=1):
            check_cancel(cancel)
            crops = augment_crops(torch.from_numpy(self.cells.crops[rows]), self.cells.stains, self.settings.augment, generator)
            loss, batch_features = self.step(crops.numpy(), torch.from_numpy(self.y[rows]).to(self.device))
            if not math.isfinite(loss):  # diverged: the epoch ends here, unscored (the watch stops the run)
                return {"epoch": epoch, "train_loss": loss, "val_f1": math.nan, "val_loss": math.nan,
                        "seconds": time.perf_counter() - began, "micro_batch": self.micro_batch}
            losses.append(loss * len(rows))
            features.append(batch_features)
            used.append(rows)
            report(progress, (epoch - 1) * len(batches) + number, self.settings.epochs * len(batches),
                   f"Fine-tuning: epoch {epoch} of {self.settings.epochs}")
        scores = self.validate(val, np.concatenate(features), self.y[np.concatenate(used)])
        return {"epoch": epoch, "train_loss": float(sum(losses) / len(order)), **scores,
                "seconds": time.perf_counter() - began, "micro_batch": self.micro_batch}

    def validate(self, val: np.ndarray, train_features: np.ndarray, train_y: np.ndarray) -> dict:
        """Macro-F1 and log-loss on the validation cells of a logistic probe fitted on
        this epoch's training features. It scores the features the final head will see, not the jointly
        trained classifier, which lags behind while the features move."""
        probe = self.fit_probe(train_features, train_y)
        proba = probe.predict_proba(self.embed(val)).astype(np.float64)
        truth = self.y[val]
        loss = float(-np.mean(np.log(np.maximum(proba[np.arange(len(truth)), truth], 1e-12))))
        return {"val_f1": macro_f1(truth, proba.argmax(axis=1), len(self.class_names)), "val_loss": loss}

    def snapshot(self) -> dict:
        return {"trainable": [p.detach().clone() for p in self.trainable],
                "classifier": {k: v.detach().clone() for k, v in self.classifier.state_dict().items()}}

    def restore(self, snapshot: dict) -> None:
        import torch

        with torch.no_grad():
            for parameter, saved in zip(self.trainable, snapshot["trainable"]):
                parameter.copy_(saved)
        self.classifier.load_state_dict(snapshot["classifier"])

    def state_dict(self) -> dict[str, np.ndarray]:
        return numpy_state(self.backbone.model)


class EarlyStopping:
    """The best epoch so far by validation macro-F1 (ties: the lower validation loss)."""

    def __init__(self, patience: int, f1: float, loss: float, snapshot: dict):
        self.patience, self.f1, self.loss, self.snapshot = patience, f1, loss, snapshot
        self.initial_f1, self.epoch = f1, 0

    def update(self, epoch: int, f1: float, loss: float, take_snapshot, eligible: bool = True) -> bool:
        """Record an epoch (``eligible``: may it become the best?); True when training should stop."""
        if eligible and (f1, -loss) > (self.f1, -self.loss):
            self.f1, self.loss, self.epoch, self.snapshot = f1, loss, epoch, take_snapshot()
        return epoch - self.epoch >= self.patience


def set_trainable(model, level: str, blocks: int) -> list:
    """Freeze the model, then unfreeze what ``level`` trains; returns the trainable parameters."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if level == "full":
        modules = [model]
    else:
        depth = len(model.blocks)
        if blocks > depth:
            raise DinolocError(f"The backbone has {depth} blocks; fine-tune at most {depth} (got --blocks {blocks}), or use level 'full'.")
        modules = list(model.blocks[depth - blocks:]) + _final_norms(model)
    trainable = []
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
            trainable.append(parameter)
    return trainable


def _final_norms(model) -> list:
    import torch

    return [m for m in (getattr(model, "norm", None), getattr(model, "fc_norm", None))
            if isinstance(m, torch.nn.Module) and any(True for _ in m.parameters())]


def parameter_groups(model, trainable: list, settings: FinetuneSettings) -> list[dict]:
    """AdamW groups: layer-wise decayed rates (``full``), no weight decay on biases, norms and tokens."""
    ids = {id(p) for p in trainable}
    depth = len(model.blocks)
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if id(parameter) not in ids:
            continue
        scale = settings.layer_decay ** (depth + 1 - layer_index(name, depth)) if settings.level == "full" else 1.0
        decay = 0.0 if parameter.ndim <= 1 or name in ("cls_token", "pos_embed", "reg_token") else settings.weight_decay
        groups.setdefault((settings.lr * scale, decay), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def layer_index(name: str, depth: int) -> int:
    """0 for the patch embedding and tokens, i + 1 for block i, depth + 1 for the final norms."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("patch_embed", "cls_token", "pos_embed", "reg_token")):
        return 0
    return depth + 1


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor per step: linear warm-up, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def balanced_order(y: np.ndarray, generator) -> np.ndarray:
    """An epoch of len(y) cell indices drawn with replacement, every class equally likely."""
    import torch

    counts = np.bincount(y)
    weights = torch.from_numpy(1.0 / counts[y])
    return torch.multinomial(weights, len(y), replacement=True, generator=generator).numpy()


def _training_device(backbone, device: Optional[str]):
    if device is None:
        return backbone.device
    from ..devices import resolve_device

    return resolve_device(device)


@contextmanager
def seeded(seed: int, device):
    """Seed torch for this run (restoring the caller's random state afterwards); deterministic kernels
    where torch has them (warn-only, so a missing one never stops a run)."""
    import torch

    devices = [device.index or 0] if device.type == "cuda" else []
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _free_device_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
