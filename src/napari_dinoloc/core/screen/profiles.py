"""Per-well and per-image profiles: the cells of a group summarised as one row, optionally corrected
for plate-to-plate differences using the control wells (docs/screens.md, "Per-well profiles").

A profile is the median (or mean) embedding of the group's cells, the fraction of its cells predicted
in each class and its number of cells. With controls, each plate's profiles are centred on the mean of
its control profiles and divided by their standard deviation, so that controls sit at zero on every
plate (the usual per-plate normalisation of image-based profiling). ``sphere=True`` then whitens the
profiles with a PCA fitted on the control profiles ("typical variation normalisation", as the
masked-autoencoder microscopy papers apply it to embeddings): controls get zero mean and unit,
uncorrelated variance, so what is left in a treated well is how it differs from normal variation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DinolocError
from .outputs import PROB_PREFIX, class_names, require

METHODS = ("median", "mean")
#: Columns that describe one cell, never carried into a profile (docs/csv.md).
CELL_COLUMNS = ("label", "centroid_y", "centroid_x", "area", "predicted_class", "confidence", "user_label")
EMBEDDING_PREFIX, FRACTION_PREFIX, COMPONENT_PREFIX = "emb_", "fraction_", "pc_"
CONTROL_COLUMN, CELLS_COLUMN = "control", "cells"
FLAT = 1e-12  # a feature (or component) varying less than this among controls is only centred


def aggregate_profiles(table, embeddings, by: Sequence[str] = ("plate", "well"), controls=None,
                       method: str = "median", *, scale: bool = True, sphere: bool = False):
    """One row per group of ``by`` columns: the group's columns, metadata constant within every group
    (e.g. ``plate`` of an image, ``backbone``), ``cells``, ``fraction_<class>`` (share of the group's
    predicted cells in each class, the model's class order) and ``emb_000…`` (the median or mean
    embedding). ``controls``: True for the cells of control wells (same rows as ``table``); given, the
    profiles are corrected per plate (a ``control`` column says which profiles are controls); ``scale``
    divides by the controls' spread too, ``sphere`` whitens on the controls (``pc_000…`` replace ``emb_``)."""
    pd = require("pandas")
    frame = table.reset_index(drop=True)
    by = [by] if isinstance(by, str) else list(by)
    vectors = _checked(frame, embeddings, by, method)
    grouped = frame.groupby(by, sort=True, dropna=False, observed=True)
    keys = [frame[c] for c in by]
    profiles = grouped.size().rename(CELLS_COLUMN).reset_index()
    carried = _constant_columns(frame, grouped, by)
    if carried:
        profiles = pd.concat([profiles[by], grouped[carried].first().reset_index(drop=True),
                              profiles[[CELLS_COLUMN]]], axis=1)
    fractions = _class_fractions(frame, keys)
    dim = vectors.shape[1]
    summary = pd.DataFrame(vectors, columns=[f"{EMBEDDING_PREFIX}{i:03d}" for i in range(dim)]).groupby(
        keys, sort=True, dropna=False, observed=True).agg(method)
    values = summary.to_numpy(np.float64)
    parts = [profiles, fractions.reset_index(drop=True)]
    if controls is not None:
        is_control = _control_profiles(frame, controls, keys)
        plates = grouped["plate"].first().to_numpy() if "plate" in carried or "plate" in by else None
        values = correct_on_controls(values, is_control, plates, scale=scale)
        parts.insert(1, pd.DataFrame({CONTROL_COLUMN: is_control}))
        if sphere:
            values = sphere_on_controls(values, is_control)
    elif sphere:
        raise DinolocError("Sphering is fitted on the control wells: name them (--controls COLUMN=VALUE).")
    prefix = COMPONENT_PREFIX if sphere else EMBEDDING_PREFIX
    parts.append(pd.DataFrame(values, columns=[f"{prefix}{i:03d}" for i in range(values.shape[1])]))
    return pd.concat(parts, axis=1)


def _checked(frame, embeddings, by: list, method: str) -> np.ndarray:
    missing = [c for c in by if c not in frame.columns]
    if missing:
        raise DinolocError(f"The cell table has no column {', '.join(missing)} to group by. Group by columns it has "
                           f"(e.g. image; it has {', '.join(map(str, frame.columns[:12]))}…).")
    if method not in METHODS:
        raise DinolocError(f"Profiles are the {' or '.join(METHODS)} of the cells, not {method!r}.")
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(frame):
        raise DinolocError(f"The cell table has {len(frame)} cells but the embeddings have shape {vectors.shape}: "
                           "give the embeddings of the same cells, in the same order.")
    if not len(frame):
        raise DinolocError("The cell table has no cells: there is nothing to summarise.")
    return vectors


def _constant_columns(frame, grouped, by: list) -> list[str]:
    """Metadata that is the same for every cell of each group (the plate of an image, the model...)."""
    candidates = [c for c in frame.columns if c not in by and c not in CELL_COLUMNS and not str(c).startswith(PROB_PREFIX)]
    if not candidates:
        return []
    counts = grouped[candidates].nunique(dropna=False).max()
    return [c for c in candidates if counts[c] <= 1]


def _class_fractions(frame, keys):
    """Share of each group's predicted cells in each class (cells without a prediction are not counted)."""
    pd = require("pandas")
    if "predicted_class" not in frame.columns:
        return pd.DataFrame(index=range(0))
    predicted = frame["predicted_class"].fillna("").astype(str)
    names = class_names(frame) or sorted(set(predicted) - {""})
    has = predicted != ""
    counted = has.groupby(keys, sort=True, dropna=False, observed=True).sum().to_numpy(np.float64)
    columns = {}
    for name in names:
        hits = (predicted == name).groupby(keys, sort=True, dropna=False, observed=True).sum().to_numpy(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            columns[f"{FRACTION_PREFIX}{name}"] = np.where(counted > 0, hits / np.maximum(counted, 1), np.nan)
    return pd.DataFrame(columns)


def _control_profiles(frame, controls, keys) -> np.ndarray:
    """True for the groups whose cells are all controls."""
    pd = require("pandas")
    flags = np.asarray(controls, dtype=bool)
    if flags.shape != (len(frame),):
        raise DinolocError(f"The controls must say for each of the {len(frame)} cells whether it is a control; "
                           f"{flags.size} values were given.")
    if not flags.any():
        raise DinolocError("No cell is a control: check the control column and value (--controls COLUMN=VALUE).")
    return pd.Series(flags).groupby(keys, sort=True, dropna=False, observed=True).all().to_numpy()


def correct_on_controls(values: np.ndarray, is_control: np.ndarray, plates=None, scale: bool = True) -> np.ndarray:
    """Per plate (all profiles as one plate when ``plates`` is None): minus the mean of the plate's control
    profiles, divided by their standard deviation when ``scale`` and there are two controls or more
    (features that do not vary among the controls are only centred)."""
    values = np.array(values, dtype=np.float64)
    plates = np.zeros(len(values)) if plates is None else np.asarray(plates, dtype=object)
    for plate in dict.fromkeys(plates.tolist()):
        rows = plates == plate
        control = rows & is_control
        if not control.any():
            raise DinolocError(f"Plate {plate} has no control profile: every plate needs control wells for the "
                               "per-plate correction (or correct without --controls).")
        centre = values[control].mean(axis=0)
        spread = values[control].std(axis=0) if scale and control.sum() > 1 else np.ones(values.shape[1])
        values[rows] = (values[rows] - centre) / np.where(spread > FLAT, spread, 1.0)
    return values


def sphere_on_controls(values: np.ndarray, is_control: np.ndarray) -> np.ndarray:
    """PCA whitening (scikit-learn ``PCA(whiten=True)``) fitted on the control profiles, applied to all;
    components without variance among the controls are left out (whitening would blow them up)."""
    from sklearn.decomposition import PCA

    controls = values[is_control]
    if len(controls) < 3:
        raise DinolocError(f"Sphering needs at least 3 control profiles; there are {len(controls)}. "
                           "Profile per image (--by image) or leave out --sphere.")
    pca = PCA(n_components=min(len(controls) - 1, values.shape[1]), whiten=True).fit(controls)
    keep = pca.explained_variance_ > FLAT * max(float(pca.explained_variance_[0]), FLAT)
    return pca.transform(values)[:, keep]
