"""Which torch device to run on, which reduced precision it can use, and how much memory is free."""

from __future__ import annotations

from functools import lru_cache

from .errors import DinolocError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_mps() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto"):
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an absent device is an error, not a fallback."""
    import torch

    name = (name or "auto").strip().lower()
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise DinolocError(f"Unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)} (or cuda:N for a given GPU).")
    if kind == "auto":
        return torch.device("cuda" if _has_cuda() else "mps" if _has_mps() else "cpu")
    if kind == "cuda":
        if not _has_cuda():
            raise DinolocError("A CUDA GPU was asked for, but PyTorch finds none. Use --device auto or cpu, or install a CUDA build of PyTorch.")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DinolocError(f"GPU {device.index} was asked for, but only {torch.cuda.device_count()} GPU(s) exist (numbered from 0).")
        return device
    if kind == "mps" and not _has_mps():
        raise DinolocError("Apple MPS was asked for, but it is not available here. Use --device auto or cpu.")
    return torch.device(name)


def describe_device(name: str = "auto") -> str:
    """One line for logs and the GUI, e.g. ``auto → cpu (no CUDA or MPS found)``."""
    import torch

    device = resolve_device(name)
    if device.type == "cuda":
        detail = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        detail = "Apple GPU"
    elif (name or "auto").lower() == "auto":
        detail = "no CUDA or MPS found"
    else:
        detail = f"{torch.get_num_threads()} threads"
    return f"{name or 'auto'} → {device} ({detail})"


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def autocast_dtype(device, precision: str = "auto"):
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``auto`` on a CPU with native bf16 is bf16: measured on a 2-core AVX512-BF16 CPU it runs ViT-S/16
    about 1.8x faster per CPU-second than fp32 (benchmarks/README.md); other CPUs stay in fp32.
    Whatever is chosen, the Embedder keeps reduced precision only if it agrees with fp32.
    """
    import torch

    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise DinolocError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DinolocError("This GPU does not support bf16: use --precision fp16 or fp32.")
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def available_memory() -> int:
    """Bytes of memory free now (psutil), or 8 GB when that cannot be told."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform
        return 8 * 1024**3
