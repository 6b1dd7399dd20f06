"""A backbone with other weights: fine-tuned weights applied to a loaded backbone.

A fine-tuned backbone is marked in one place, ``LoadedBackbone.finetuned_from`` (the backbone, as
loaded, that fine-tuning started from: fine-tuning again starts from it, bundles name its weights). Its own ``weights_hash`` is computed from the weights, so embedding caches
and bundles never mix the two models.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from typing import Mapping

import numpy as np

from ..errors import DinolocError
from ..files import hash_array

_HASH_PREFIX = "finetuned:"  # part of the hash value only (kept so existing caches and bundles stay valid)


def is_fine_tuned(backbone) -> bool:
    """True for a backbone carrying fine-tuned weights (``apply_finetuned``)."""
    return bool(getattr(backbone, "is_finetuned", False))


def apply_finetuned(backbone, result_or_state):
    """A new LoadedBackbone with the fine-tuned weights; ``backbone`` itself is not changed.

    Accepts a state dict or anything with a ``backbone_state`` (a FinetuneResult, a ModelBundle).
    A level-"head" result (no backbone state) gives ``backbone`` back.
    """
    import torch

    state = getattr(result_or_state, "backbone_state", result_or_state)
    if state is None:
        return backbone
    model = copy.deepcopy(backbone.model)
    try:
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise DinolocError(f"The fine-tuned weights do not fit the backbone {backbone.name!r} ({first}): "
                           "load the backbone the model was fine-tuned from.") from exc
    model.eval().to(backbone.device)
    return replace(backbone, model=model, weights_hash=state_hash(state), finetuned_from=backbone.base)


def state_hash(state: Mapping[str, object]) -> str:
    """``finetuned:<sha256>`` over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(hash_array(as_numpy(state[name])).encode())
    return _HASH_PREFIX + digest.hexdigest()


def numpy_state(model) -> dict[str, np.ndarray]:
    """The model's state dict as numpy arrays on the CPU (copies)."""
    return {k: v.detach().to("cpu").numpy().copy() for k, v in model.state_dict().items()}


def as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().to("cpu").numpy()
    return np.asarray(value)
