"""The three heads: kNN (DINO4Cells), logistic regression (linear probe) and the DINO4Cells MLP."""

from __future__ import annotations

import math

import numpy as np

from ..errors import DinolocError
from ..progress import check_cancel, report
from ._base import Head, _class_weights, _require, _standardise_fit


# --------------------------------------------------------------------------------------------
# kNN (DINO4Cells)
# --------------------------------------------------------------------------------------------
class KnnHead(Head):
    kind = "knn"
    description = "k nearest neighbours by cosine similarity, temperature-weighted votes; no training"
    paper = "Doron, Moutakanni et al., DINO4Cells (PLOS Comp Biol); Caron et al., DINO (ICCV 2021)"
    defaults = {"k": 20, "temperature": 0.07, "seed": 0}  # seed: every head takes one; kNN has no randomness
    trains_with_torch = predicts_with_torch = False
    _chunk = 2048  # query rows per similarity block, bounds memory to chunk x training cells

    def _check_params(self, params):
        params = {"k": int(params["k"]), "temperature": float(params["temperature"]), "seed": int(params["seed"])}
        _require(params["k"] >= 1, "kNN needs k of at least 1 neighbour.")
        _require(params["temperature"] > 0, "kNN needs a positive temperature (DINO uses 0.07).")
        return params

    def _train(self, x, y, progress, cancel):
        self._train_vectors = _l2_normalise(x)
        self._train_classes = y
        report(progress, 1, 1, f"kNN: stored {len(x)} training cells")

    def _proba(self, x):
        k = min(self.params["k"], len(self._train_vectors))  # the cap: few annotated cells
        return np.concatenate([self._vote(_l2_normalise(x[i:i + self._chunk]), k) for i in range(0, len(x), self._chunk)])

    def _vote(self, queries: np.ndarray, k: int) -> np.ndarray:
        similarity = queries @ self._train_vectors.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        sims = np.take_along_axis(similarity, nearest, axis=1).astype(np.float64)
        # exp(sim / T) normalised per row; subtracting the row maximum avoids overflow, same ratios.
        weights = np.exp((sims - sims.max(axis=1, keepdims=True)) / self.params["temperature"])
        votes = np.zeros((len(queries), len(self.class_names)))
        np.add.at(votes, (np.arange(len(queries))[:, None], self._train_classes[nearest]), weights)
        return votes

    def _tensor_names(self):
        return ("train_vectors", "train_classes")

    def _tensors(self):
        return {"train_vectors": self._train_vectors, "train_classes": self._train_classes}

    def _expected_shapes(self):
        return {"train_vectors": (None, self.input_dim), "train_classes": (None,)}

    def _load_tensors(self, tensors):
        self._train_vectors = tensors["train_vectors"].astype(np.float32)
        self._train_classes = tensors["train_classes"].astype(np.int64)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Logistic regression
# --------------------------------------------------------------------------------------------
class LogisticHead(Head):
    """Multinomial logistic regression on standardised features.

    Minimises sum_i w_i CE_i + ||W||^2 / (2C) (bias not penalised), w_i = class-balanced weights:
    the same optimum as scikit-learn's LogisticRegression(C=C, class_weight="balanced").
    Full-batch L-BFGS from zeros in float64: no randomness, so runs repeat exactly.
    """

    kind = "logistic"
    description = "multinomial logistic regression (linear probe) on standardised features, class-balanced, L2"
    paper = "Isselmann et al., SSL-pretrained models for protein localization (OpenCell, arXiv 2604.10970)"
    defaults = {"C": 1.0, "max_iter": 500, "balanced": True, "seed": 0}  # seed unused: L-BFGS from zeros is deterministic
    predicts_with_torch = False  # a loaded model predicts without importing torch

    def _check_params(self, params):
        params = {"C": float(params["C"]), "max_iter": int(params["max_iter"]),
                  "balanced": bool(params["balanced"]), "seed": int(params["seed"])}
        _require(params["C"] > 0, "Logistic regression needs a positive C (inverse regularisation strength, e.g. 1.0).")
        _require(params["max_iter"] >= 1, "Logistic regression needs max_iter of at least 1.")
        return params

    def _train(self, x, y, progress, cancel):
        import torch

        self._mean, self._scale = _standardise_fit(x)
        n_classes, max_iter = len(self.class_names), self.params["max_iter"]
        features = torch.from_numpy((x - self._mean) / self._scale).double()
        targets = torch.from_numpy(y)
        sample_weights = self._sample_weights(y, n_classes)
        weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, max_eval=2 * max_iter,
                                      tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
                                      line_search_fn="strong_wolfe")
        evaluations = [0]

        def closure():
            check_cancel(cancel)  # raising here aborts L-BFGS cleanly
            optimiser.zero_grad()
            ce = torch.nn.functional.cross_entropy(features @ weight.T + bias, targets, reduction="none")
            loss = (sample_weights * ce).sum() / len(y) + (weight ** 2).sum() / (2 * self.params["C"] * len(y))
            loss.backward()
            evaluations[0] += 1
            report(progress, min(evaluations[0], max_iter), max_iter, "training logistic regression")
            return loss

        optimiser.step(closure)
        report(progress, max_iter, max_iter, "training logistic regression")
        self._weight = weight.detach().numpy().astype(np.float32)
        self._bias = bias.detach().numpy().astype(np.float32)

    def _sample_weights(self, y, n_classes):
        import torch

        per_class = _class_weights(y, n_classes) if self.params["balanced"] else np.ones(n_classes)
        return torch.from_numpy(per_class[y])

    def _proba(self, x):
        logits = ((x - self._mean) / self._scale).astype(np.float64) @ self._weight.T.astype(np.float64) + self._bias
        return _softmax(logits)

    def _tensor_names(self):
        return ("scaler_mean", "scaler_scale", "weight", "bias")

    def _tensors(self):
        return {"scaler_mean": self._mean, "scaler_scale": self._scale, "weight": self._weight, "bias": self._bias}

    def _expected_shapes(self):
        d, k = self.input_dim, len(self.class_names)
        return {"scaler_mean": (d,), "scaler_scale": (d,), "weight": (k, d), "bias": (k,)}

    def _load_tensors(self, tensors):
        self._mean, self._scale = tensors["scaler_mean"], tensors["scaler_scale"]
        self._weight, self._bias = tensors["weight"], tensors["bias"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# MLP (DINO4Cells head)
# --------------------------------------------------------------------------------------------
class MlpHead(Head):
    """StandardScaler -> Linear(D,512) ReLU Dropout(0.5) Linear(512,256) ReLU Dropout(0.5) Linear(256,K).

    Differences from DINO4Cells, on purpose:
    - single-label softmax cross-entropy (our annotations give one class per cell; the paper used
      multilabel BCE on HPA's multi-class labels);
    - lr 1e-3 for batch 128 instead of 1e-4 * batch / 256 (= 5e-5): the paper trained on tens of
      thousands of cells; with the hundreds a user annotates, an epoch is a handful of steps and the
      paper's rate would need thousands of epochs. 1e-3 for 100 epochs converges on a few hundred
      cells in seconds on one CPU thread. AdamW, weight decay 0.04 and the cosine schedule are the paper's;
    - class-balanced loss weights (user annotations are rarely balanced).
    Seeded: initial weights, shuffling and dropout come from ``seed``, so a CPU run repeats exactly.
    """

    kind = "mlp"
    description = "two-hidden-layer MLP (512, 256, dropout 0.5) on standardised features, AdamW + cosine schedule"
    paper = "Doron, Moutakanni et al., DINO4Cells (PLOS Comp Biol), classification head"
    defaults = {"hidden": (512, 256), "dropout": 0.5, "epochs": 100, "batch_size": 128, "lr": 1e-3,
                "weight_decay": 0.04, "balanced": True, "seed": 0}

    def _check_params(self, params):
        params = {"hidden": tuple(int(h) for h in params["hidden"]), "dropout": float(params["dropout"]),
                  "epochs": int(params["epochs"]), "batch_size": int(params["batch_size"]), "lr": float(params["lr"]),
                  "weight_decay": float(params["weight_decay"]), "balanced": bool(params["balanced"]),
                  "seed": int(params["seed"])}
        _require(all(h >= 1 for h in params["hidden"]), "MLP hidden layer sizes must be positive.")
        _require(0 <= params["dropout"] < 1, "MLP dropout must be between 0 and 1 (the paper uses 0.5).")
        _require(params["epochs"] >= 1 and params["batch_size"] >= 1, "MLP needs at least 1 epoch and a batch size of at least 1.")
        _require(params["lr"] > 0 and params["weight_decay"] >= 0, "MLP needs a positive learning rate and a non-negative weight decay.")
        return params

    def _build(self, dim: int, n_classes: int):
        import torch.nn as nn

        layers, width = [], dim
        for hidden in self.params["hidden"]:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(self.params["dropout"])]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)

    def _train(self, x, y, progress, cancel):
        import torch

        self._mean, self._scale = _standardise_fit(x)
        features = torch.from_numpy((x - self._mean) / self._scale)
        targets = torch.from_numpy(y)
        with torch.random.fork_rng(devices=[]):  # seed locally; leave the caller's RNG untouched
            torch.manual_seed(self.params["seed"])
            self._net = self._build(x.shape[1], len(self.class_names))
            self._run_epochs(features, targets, progress, cancel)
        self._net.eval()

    def _run_epochs(self, features, targets, progress, cancel):
        import torch

        epochs, batch = self.params["epochs"], min(self.params["batch_size"], len(targets))
        steps_per_epoch = math.ceil(len(targets) / batch)
        optimiser = torch.optim.AdamW(self._net.parameters(), lr=self.params["lr"], weight_decay=self.params["weight_decay"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs * steps_per_epoch)
        class_weights = _class_weights(targets.numpy(), len(self.class_names)) if self.params["balanced"] else None
        loss_fn = torch.nn.CrossEntropyLoss(weight=None if class_weights is None else torch.from_numpy(class_weights).float())
        self._net.train()
        for epoch in range(epochs):
            check_cancel(cancel)
            for rows in torch.randperm(len(targets)).split(batch):
                optimiser.zero_grad()
                loss_fn(self._net(features[rows]), targets[rows]).backward()
                optimiser.step()
                schedule.step()
            report(progress, epoch + 1, epochs, "training MLP head")

    def _proba(self, x):
        import torch

        with torch.no_grad():
            logits = self._net(torch.from_numpy((x - self._mean) / self._scale)).double().numpy()
        return _softmax(logits)

    def _tensor_names(self):
        # nn.Sequential numbers Linear, ReLU, Dropout in turn: the Linear layers sit at 0, 3, 6, ...
        linears = range(0, 3 * len(self.params["hidden"]) + 1, 3)
        return ("scaler_mean", "scaler_scale") + tuple(f"net.{i}.{p}" for i in linears for p in ("weight", "bias"))

    def _tensors(self):
        net = {f"net.{k}": v.detach().numpy().copy() for k, v in self._net.state_dict().items()}
        return {"scaler_mean": self._mean, "scaler_scale": self._scale, **net}

    def _expected_shapes(self):
        shapes, width = {"scaler_mean": (self.input_dim,), "scaler_scale": (self.input_dim,)}, self.input_dim
        for i, out in enumerate((*self.params["hidden"], len(self.class_names))):
            shapes[f"net.{3 * i}.weight"], shapes[f"net.{3 * i}.bias"] = (out, width), (out,)
            width = out
        return shapes

    def _load_tensors(self, tensors):
        import torch

        self._mean, self._scale = tensors["scaler_mean"], tensors["scaler_scale"]
        with torch.random.fork_rng(devices=[]):  # building draws initial weights; keep the caller's RNG
            self._net = self._build(self.input_dim, len(self.class_names))
        try:
            self._net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("net.")})
        except RuntimeError as exc:
            raise DinolocError(f"The saved MLP head does not match its own settings ({exc}); the model file is damaged.") from exc
        self._net.eval()
