"""Recognising tensor files by their structure, and checking a safetensors header before any tensor is read.

A file's kind is never decided by one byte: a safetensors file starts with the 8-byte little-endian
length of its JSON header, whose low byte can be anything (0x80 included, which is also the pickle
protocol byte). Every size a header declares is checked against the file itself, so a small file
cannot make the loader allocate more than the file holds.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import DinolocError

SAFETENSORS, TORCH_ZIP, PICKLE = "safetensors", "torch-zip", "pickle"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def file_kind(path: str | Path) -> str | None:
    """'safetensors', 'torch-zip', 'pickle' or None (something else), from the file's structure."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.read(16)
        if len(start) >= 9:
            (header_len,) = struct.unpack("<Q", start[:8])
            if 2 <= header_len <= min(size - 8, MAX_HEADER_BYTES):
                handle.seek(8)
                if handle.read(1) == b"{":
                    return SAFETENSORS
    if start.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5:  # PROTO opcode + protocol 2..5
        return PICKLE
    return None


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(path: str | Path) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """(metadata, {name: TensorInfo}) of a safetensors file, every declared size checked against the file.

    Reads only the header. Raises DinolocError naming the first problem.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        first = handle.read(8)
        if len(first) < 8:
            raise _damaged(path, "shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", first)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise _damaged(path, f"its header claims {header_len} bytes but the file has {size}")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"its header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _damaged(path, "its metadata is not a set of text entries")
    data_bytes = size - 8 - header_len
    return metadata, {name: _tensor_info(path, name, entry, data_bytes) for name, entry in header.items()}


def _tensor_info(path: Path, name: str, entry, data_bytes: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _damaged(path, f"the entry of tensor {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _damaged(path, f"tensor {name!r} has an unknown type {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _damaged(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise _damaged(path, f"tensor {name!r} has invalid data offsets {offsets!r}")
    start, stop = offsets
    declared = math.prod(shape) * DTYPE_BYTES[dtype]
    if not 0 <= start <= stop <= data_bytes or stop - start != declared:
        raise _damaged(path, f"tensor {name!r} declares shape {tuple(shape)} ({declared} bytes) but its data "
                             f"spans bytes {start}..{stop} of the {data_bytes} the file holds")
    return TensorInfo(dtype, tuple(shape))


class DamagedFile(DinolocError):
    """A tensor file whose structure is broken; ``reason`` says how (for callers that word it their way)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path.name} is not a valid safetensors file ({reason}): it is damaged, truncated or "
                         "crafted. Choose the file again or save it again.")
        self.reason = reason


def _damaged(path: Path, reason: str) -> DamagedFile:
    return DamagedFile(path, reason)


def check_limit(what: str, value, limit: int, path: Path) -> int:
    """``value`` as an int within 1..limit, or a DinolocError naming the file and the limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 1 <= value <= limit:
        raise DinolocError(f"{path.name} declares {what} {value!r}, outside what napari-dinoloc accepts (1 to {limit}): "
                           "the file is damaged or crafted. Choose another file.")
    return int(value)
