"""Finding and embedding the cells of many images, written to files (``dinoloc segment`` / ``embed``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback


def write_cells(jobs: Sequence, options, out_dir, progress: Optional[ProgressCallback] = None) -> Iterator[tuple[Path, int]]:
    """Per image: the label image ``<name>_cells.tif`` and the cell table ``<name>_cells.csv``;
    yields (label image path, number of cells) as each image is done."""
    from ..batch import prepare_session
    from ..files import check_writable
    from ..sample_files import write_label_image
    from ..table import write_table

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DinolocError(f"The output folder {out_dir} does not exist: create it first.")
    for job in jobs:
        session = prepare_session(job, options, progress=progress)
        out = check_writable(out_dir / f"{session.image.name}_cells.tif")
        write_label_image(out, session.labels)
        write_table(out_dir / f"{session.image.name}_cells.csv", session.rows(), ())
        yield out, len(session.table)


def write_embeddings(jobs: Sequence, options, backbone, out, cache=None, progress: Optional[ProgressCallback] = None,
                     cancel: Optional[CancelToken] = None) -> tuple[int, int]:
    """Every cell of every image embedded into one .npz; (cells, images)."""
    from ..embedding_files import save_embeddings
    from ..files import check_writable
    from .training import embedded_sessions

    check_writable(out)
    parts = [(s.image.name, s.embeddings) for s in embedded_sessions(jobs, options, backbone, cache, progress, cancel)]
    save_embeddings(out, parts)
    return sum(len(e.labels) for _, e in parts), len(parts)


# ---- one image in a session (the widgets' exports) ---------------------------------------------------
def export_cells(session, path, user_labels=None) -> Path:
    """The per-cell CSV of the session: geometry, predictions when there are any, the user's labels."""
    from ..table import write_table

    session.require_cells()
    class_names = session.predictions.class_names if session.predictions is not None else ()
    return write_table(path, session.rows(user_labels or {}), class_names)


def export_embeddings(session, path) -> Path:
    from ..embedding_files import save_embeddings

    session.require_embeddings()
    return save_embeddings(path, [(session.image.name, session.embeddings)])
