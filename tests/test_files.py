"""Output files honour the umask; leftovers of killed writes are cleaned (issue 10, item 7)."""

import os
import stat
import subprocess
import sys
import time

import pytest

from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.files import STALE_SECONDS, atomic_write, check_writable


def written_mode(path, umask):
    old = os.umask(umask)
    try:
        with atomic_write(path, "w") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_output_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    assert written_mode(tmp_path / "table.csv", umask) == mode


def killed_write_leftover(path):
    """A temporary file of a write whose process was killed: its pid no longer exists."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)
    leftover = path.parent / f".{path.name}.{dead_pid}.ab12cd34.tmp"
    leftover.write_text("half")
    return leftover


def test_leftovers_of_killed_writes_are_removed_when_the_output_is_written_again(tmp_path):
    target = tmp_path / "cells.csv"
    dead = killed_write_leftover(target)
    old = tmp_path / f".{target.name}.k3j4h5g6.tmp"  # an old mkstemp name (no pid), hours old
    old.write_text("half")
    hours_ago = time.time() - 2 * STALE_SECONDS
    os.utime(old, (hours_ago, hours_ago))
    live = tmp_path / f".{target.name}.{os.getppid()}.ffff0000.tmp"  # a writer still running: kept
    live.write_text("in progress")
    recent = tmp_path / f".{target.name}.q1w2e3r4.tmp"  # recent, no pid: may be in use, kept
    recent.write_text("in progress")
    other = tmp_path / ".other.csv.1.abcd.tmp"  # another output's temporaries are not touched
    other.write_text("x")
    with atomic_write(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new"
    assert not dead.exists() and not old.exists()
    assert live.exists() and recent.exists() and other.exists()


def test_a_failed_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "cells.csv"
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_an_output_path_that_is_a_folder_is_refused_before_the_work(tmp_path):
    with pytest.raises(DinolocError, match="existing folder"):
        check_writable(tmp_path)
    with pytest.raises(DinolocError, match="existing folder"):
        with atomic_write(tmp_path, "w"):
            pass
