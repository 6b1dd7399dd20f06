"""Atomic writes and content hashes: a crash never leaves a half-written file behind."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .errors import DinolocError


_TMP_SUFFIX = ".tmp"
STALE_SECONDS = 3600  # a temporary file this old, or whose writer is gone, is a leftover of a killed write


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, sync: bool = True, **open_kwargs) -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it into place on success.

    ``sync=False`` skips the fsync before the rename: only for files whose damage is detected on reading
    (a screen's shards, checked against their checksum and computed anew), where it cost ~25 ms per file.

    On any error the temporary file is removed and ``path`` keeps its previous content. The file gets
    the permissions the user's umask gives new files (as any program's output), and temporary files
    left by killed writes of the same output are removed first.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise DinolocError(f"Cannot write {path}: the folder {folder} does not exist. Create it or choose another output path.")
    if path.is_dir():
        raise DinolocError(f"Cannot write {path}: it is an existing folder. Give a file name (e.g. {path / 'result'}).")
    remove_stale_temporaries(path)
    fd, tmp = _create_temporary(path, folder)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _create_temporary(path: Path, folder: Path) -> tuple[int, Path]:
    """A new file ``.<name>.<pid>.<random>.tmp``; mode 0o666 lets the umask decide, as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise DinolocError(f"Cannot write {path}: {exc.strerror}. Choose a folder you can write to.") from exc
    raise DinolocError(f"Cannot write {path}: no free temporary file name in {folder}.")


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporary files of earlier writes of ``path`` whose writer is gone or that are over an hour old."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(prefix) and e.name.endswith(_TMP_SUFFIX)]
    except OSError:
        return removed
    for entry in entries:
        middle = entry.name[len(prefix):-len(_TMP_SUFFIX)]
        pid = middle.split(".")[0] if "." in middle else ""
        try:
            old = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
            if old or (pid.isdigit() and not _process_alive(int(pid))):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # another writer removed or renamed it meanwhile
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    import psutil  # not os.kill(pid, 0): on Windows that terminates the process

    return psutil.pid_exists(pid)


def write_json_atomic(path: str | Path, data) -> None:
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)


def check_writable(path: str | Path) -> Path:
    """Fail early (before hours of work) if ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise DinolocError(f"Cannot write {path}: the folder {folder} does not exist. Create it or choose another output path.")
    if path.is_dir():
        raise DinolocError(f"Cannot write {path}: it is an existing folder. Give a file name (e.g. {path / 'result'}).")
    if not os.access(folder, os.W_OK):
        raise DinolocError(f"Cannot write {path}: no permission to write in {folder}. Choose another output path.")
    if path.exists() and not os.access(path, os.W_OK):
        raise DinolocError(f"Cannot write {path}: the file is read-only. Choose another output path.")
    return path


def hash_array(array) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    import numpy as np

    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def hash_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
