"""Finding and embedding the cells of many images, written to files (``dinoloc segment`` / ``embed``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback


def write_cells(jobs: Sequence, options, out_dir, progress: Optional[ProgressCallback] = None,
                skips=None) -> Iterator[tuple[Path, int]]:
    """Per image: the label image ``<name>_cells.tif`` and the cell table ``<name>_cells.csv``;
    yields (label image path, number of cells) as each image is done. The folder is created.
    With ``skips`` (a ``core.batch.Skips``) an image that cannot be used is noted and passed over."""
    from ..batch import guarded, prepare_session
    from ..files import check_writable
    from ..sample_files import write_label_image
    from ..table import write_table

    out_dir = Path(out_dir)

    def segmented(job) -> tuple[Path, int]:
        session = prepare_session(job, options, progress=progress)
        make_folder(out_dir)  # only once there is something to write into it
        out = check_writable(out_dir / f"{session.image.name}_cells.tif")
        check_writable(out_dir / f"{session.image.name}_cells.csv")
        write_label_image(out, session.labels)
        write_table(out_dir / f"{session.image.name}_cells.csv", session.rows(), ())
        return out, len(session.table)

    yield from guarded(jobs, skips, segmented)


def make_folder(folder) -> Path:
    """An output folder, created with its parents; a file of that name is refused."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DinolocError(f"The output folder {folder} is a file: give a folder name.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DinolocError(f"Cannot create the output folder {folder}: {exc.strerror}. Choose another place.") from None
    return folder


def write_embeddings(jobs: Sequence, options, backbone, out, cache=None, progress: Optional[ProgressCallback] = None,
                     cancel: Optional[CancelToken] = None, skips=None, keep=None) -> tuple[int, int]:
    """Every cell of every image embedded into one .npz; (cells, images). With ``skips``, images that
    cannot be used are noted there and left out. ``keep``: a dict that gets the "parts" ((image name,
    Embeddings) pairs) and the cells' "rows" (for --parquet / --zarr / --h5ad)."""
    from ..embedding_files import save_embeddings
    from ..files import check_writable
    from .training import embedded_sessions

    check_writable(out)
    sessions = embedded_sessions(jobs, options, backbone, cache, progress, cancel, skips=skips)
    parts, rows = [], []
    for session in sessions:
        parts.append((session.image.name, session.embeddings))
        if keep is not None:
            rows.extend(session.rows())
    save_embeddings(out, parts)
    if keep is not None:
        keep.update(parts=parts, rows=rows)
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
