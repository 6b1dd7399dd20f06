"""Choosing the training precision by measuring it: on some CPUs bf16 autocast makes training slower."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable

TRIAL_STEPS = 2
TRIAL_ROUNDS = 2
MIN_GAIN = 1.1  # reduced precision must be clearly faster to be worth its rounding


def autocast_context(device, precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def time_steps(step: Callable[[], None], repeats: int = TRIAL_STEPS) -> float:
    """Seconds per call of ``step`` after one untimed warm-up call."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def choose_precision(requested: str, device, trial: Callable[[str], float]) -> tuple[str, dict]:
    """("fp32" | "bf16", seconds per trial step measured). ``trial(precision)`` times a training step.

    CUDA with bf16 support: bf16; other GPUs: fp32. CPU "auto": the faster of the two, measured.
    """
    import torch

    device = torch.device(device)
    if requested != "auto":
        return requested, {}
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), {}
    if device.type != "cpu":
        return "fp32", {}
    seconds = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(TRIAL_ROUNDS):  # interleaved, best of each: on a shared CPU one timing can be 5x off
        for precision in seconds:
            seconds[precision] = min(seconds[precision], trial(precision))
    chosen = "bf16" if seconds["fp32"] > MIN_GAIN * seconds["bf16"] else "fp32"
    return chosen, seconds
